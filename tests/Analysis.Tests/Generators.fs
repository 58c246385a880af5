/// FsCheck generators shared by the property tests. Fixed seeds are printed by FsCheck on failure.
module MechInterp.Analysis.Tests.Generators

open FsCheck
open FsCheck.FSharp

/// A tensor shape of rank 1..3 with small sizes, and a seed to fill it.
type TensorSpec = { Shape: int64[]; Seed: int64; Scale: float }

let tensorSpec =
    gen {
        let! rank = Gen.choose (1, 3)
        let! dims = Gen.arrayOfLength rank (Gen.choose (1, 40))
        let! seed = Gen.choose (0, 1_000_000)
        let! scale = Gen.elements [ 0.1; 1.0; 10.0; 1000.0 ]
        return { Shape = dims |> Array.map int64; Seed = int64 seed; Scale = scale }
    }

type Arbitraries =
    static member TensorSpec() = Arb.fromGen tensorSpec

/// A random valid decoder config and a token batch for it.
type ModelCase =
    { Config: MechInterp.Model.DecoderConfig
      Batch: int64
      Positions: int64
      TokenSeed: int }

let modelCase =
    gen {
        let! heads = Gen.choose (1, 3)
        let! dHead = Gen.elements [ 2; 4; 8 ]
        let! layers = Gen.choose (1, 3)
        let! norm = Gen.elements [ "LN"; "LNPre"; "RMS"; "none" ]
        let! act = Gen.elements [ "relu"; "gelu"; "gelu_new"; "silu" ]
        let! pos = Gen.elements [ "standard"; "rotary" ]
        let! kind = Gen.elements [ "dense"; "attn_only"; "moe" ]
        let! vocab = Gen.choose (3, 20)
        let! ctx = Gen.choose (2, 10)
        let! seed = Gen.choose (0, 10_000)
        let! batch = Gen.choose (1, 3)
        let! positions = Gen.choose (1, ctx)
        let! tokenSeed = Gen.choose (0, 10_000)
        let! experts = Gen.choose (2, 4)
        let! k = Gen.choose (1, experts)
        let! residual = Gen.frequency [ 3, Gen.constant true; 1, Gen.constant false ]
        let cfg =
            MechInterp.Model.DecoderConfig(
                d_model = heads * dHead, n_heads = heads, d_head = dHead, n_layers = layers, d_mlp = 2 * heads * dHead,
                d_vocab = vocab, n_ctx = ctx, act_fn = act, normalization_type = norm, positional_embedding_type = pos,
                attn_only = (kind = "attn_only"), n_experts = (if kind = "moe" then experts else 0),
                experts_per_token = (if kind = "moe" then k else 0), residual = residual, seed = seed)
        return { Config = cfg; Batch = int64 batch; Positions = int64 positions; TokenSeed = tokenSeed }
    }

/// Residual and plain decoders (config.residual false: sublayers replace the stream).
type ModelArbitraries =
    static member ModelCase() = Arb.fromGen modelCase

/// Residual decoders only: the stream-as-sum-of-writes properties hold for these.
type ResidualModelArbitraries =
    static member ModelCase() = Arb.fromGen (modelCase |> Gen.filter (fun c -> c.Config.residual))

/// Plain decoders only.
type PlainModelArbitraries =
    static member ModelCase() = Arb.fromGen (modelCase |> Gen.filter (fun c -> not c.Config.residual))

/// A small random decoder and a random input for it: every norm, positional scheme, attention-only or not.
type ModelSpec =
    { Layers: int
      DModel: int
      Heads: int
      AttnOnly: bool
      Norm: string
      Positional: string
      AttnResult: bool
      Vocab: int
      Batch: int
      Positions: int
      Seed: int }

let modelSpec =
    gen {
        let! layers = Gen.choose (1, 3)
        let! heads = Gen.elements [ 1; 2; 4 ]
        let! dHead = Gen.elements [ 2; 4 ]
        let! attnOnly = Gen.elements [ true; false ]
        let! norm = Gen.elements [ "LN"; "LNPre"; "RMS"; "none" ]
        let! positional = Gen.elements [ "standard"; "rotary" ]
        let! attnResult = Gen.elements [ true; false ]
        let! vocab = Gen.choose (4, 17)
        let! batch = Gen.choose (1, 3)
        let! positions = Gen.choose (2, 7)
        let! seed = Gen.choose (0, 100_000)
        return { Layers = layers; DModel = heads * dHead; Heads = heads; AttnOnly = attnOnly; Norm = norm
                 Positional = positional; AttnResult = attnResult; Vocab = vocab; Batch = batch
                 Positions = positions; Seed = seed }
    }

type ModelSpecArbitraries =
    static member ModelSpec() = Arb.fromGen modelSpec

/// The model and two random token batches (clean, corrupted) a spec describes.
let build (spec: ModelSpec) =
    let cfg =
        MechInterp.Model.DecoderConfig(
            d_model = spec.DModel, n_layers = spec.Layers, n_heads = spec.Heads, attn_only = spec.AttnOnly,
            normalization_type = spec.Norm, positional_embedding_type = spec.Positional,
            use_attn_result = spec.AttnResult, d_vocab = spec.Vocab, n_ctx = 8, d_mlp = 2 * spec.DModel,
            init_range = 0.5, seed = spec.Seed)
    let model = new MechInterp.Model.HookedTransformer(cfg)
    let gen = new TorchSharp.torch.Generator(uint64 spec.Seed)
    let tokens () =
        TorchSharp.torch.randint(int64 spec.Vocab, [| int64 spec.Batch; int64 spec.Positions |], generator = gen)
    model, tokens (), tokens ()
