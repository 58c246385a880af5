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
        let cfg =
            MechInterp.Model.DecoderConfig(
                d_model = heads * dHead, n_heads = heads, d_head = dHead, n_layers = layers, d_mlp = 2 * heads * dHead,
                d_vocab = vocab, n_ctx = ctx, act_fn = act, normalization_type = norm, positional_embedding_type = pos,
                attn_only = (kind = "attn_only"), n_experts = (if kind = "moe" then experts else 0),
                experts_per_token = (if kind = "moe" then k else 0), seed = seed)
        return { Config = cfg; Batch = int64 batch; Positions = int64 positions; TokenSeed = tokenSeed }
    }

type ModelArbitraries =
    static member ModelCase() = Arb.fromGen modelCase
