/// TransformerLens's weight processing: the function the model computes is unchanged, the centred weights have the
/// zero means WeightProcessing documents, a processed model saves and loads, and undefined steps are refused.
module MechInterp.Analysis.Tests.WeightProcessingProperties

open System
open System.IO
open Xunit
open Xunit.Abstractions
open FsCheck.Xunit
open TorchSharp
open MechInterp.Model
open MechInterp.Analysis.Tests.Generators
open MechInterp.Analysis.Tests.ModelProperties

/// Every parameter moved off its initial value (norm weights around 1, biases away from 0), so that no fold is trivial.
let randomize (model: HookedTransformer) (seed: int) =
    use _ = torch.no_grad()
    let g = torch.Generator(uint64 seed)
    for struct (name: string, p: TorchSharp.Modules.Parameter) in model.named_parameters() do
        let noise: torch.Tensor = torch.randn(p.shape, dtype = p.dtype, generator = g).mul(torch.tensor 0.3)
        if name.EndsWith ".w" then p.copy_(noise.add(torch.tensor 1.0)) |> ignore else p.add_(noise) |> ignore

/// The steps this configuration defines: fold LN except into MoE blocks; centre only where a norm centres.
let optionsFor (cfg: DecoderConfig) =
    let foldLn = not (cfg.normalization_type = "LN" && cfg.IsMoe)
    let centring = cfg.normalization_type = "LN" || cfg.normalization_type = "LNPre"
    foldLn, centring

let maxAbs (t: torch.Tensor) = t.abs().max().to_type(torch.ScalarType.Float64).item<float>()

let meanOver (dim: int64) (t: torch.Tensor) = maxAbs (t.mean([| dim |]))

[<Collection("torch")>]
type WeightProcessingProperties(_fixture: TorchFixture, output: ITestOutputHelper) =

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 25)>]
    member _.``processed weights give the same log-probabilities within 1e-9 in float64`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        model.``to``(torch.ScalarType.Float64) |> ignore
        randomize model c.TokenSeed
        let foldLn, centring = optionsFor c.Config
        use processed = model.ProcessWeights(foldLn = foldLn, centerWritingWeights = centring)
        let tokens = tokensFor c
        use _ = torch.no_grad()
        let before = model.forward(tokens).log_softmax(-1L)
        let after = processed.forward(tokens).log_softmax(-1L)
        let diff = maxAbs (before - after)
        if diff > 1e-9 then failwith $"log-probabilities moved by {diff:E3} ({c.Config.ToJson()})"
        // Without center_unembed the logits themselves are unchanged.
        use logitsOnly = model.ProcessWeights(foldLn = foldLn, centerWritingWeights = centring, centerUnembed = false)
        let logitDiff = maxAbs (model.forward tokens - logitsOnly.forward tokens)
        if logitDiff > 1e-9 then failwith $"logits moved by {logitDiff:E3} without center_unembed ({c.Config.ToJson()})"
        true

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 25)>]
    member _.``centred weights have zero means and the folded norms are gone`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        model.``to``(torch.ScalarType.Float64) |> ignore
        randomize model c.TokenSeed
        let foldLn, centring = optionsFor c.Config
        use processed = model.ProcessWeights(foldLn = foldLn, centerWritingWeights = centring)
        let w = processed.StateDict()
        let zero what (value: float) = if value > 1e-12 then failwith $"{what}: mean {value:E3} ({c.Config.ToJson()})"
        let cfg = c.Config
        let norm = cfg.normalization_type
        if foldLn && (norm = "LN" || norm = "RMS") then
            let expected = if norm = "LN" then "LNPre" else "RMSPre"
            if processed.Config.normalization_type <> expected then failwith $"normalization_type {processed.Config.normalization_type}, expected {expected}"
            if w.Keys |> Seq.exists (fun n -> n.Contains "ln") then failwith $"norm parameters left: {String.Join(',', w.Keys)}"
        if foldLn && norm = "LN" then
            for l in 0 .. cfg.n_layers - 1 do
                for m in [ "Q"; "K"; "V" ] do zero $"blocks.{l}.attn.W_{m} over d_model" (meanOver -2L w.[$"blocks.{l}.attn.W_{m}"])
                if not cfg.attn_only then zero $"blocks.{l}.mlp.W_in over d_model" (meanOver -2L w.[$"blocks.{l}.mlp.W_in"])
            zero "unembed.W_U over d_model" (meanOver -2L w.["unembed.W_U"])
        if centring then
            zero "embed.W_E over d_model" (meanOver -1L w.["embed.W_E"])
            if cfg.positional_embedding_type = "standard" then zero "pos_embed.W_pos over d_model" (meanOver -1L w.["pos_embed.W_pos"])
            for l in 0 .. cfg.n_layers - 1 do
                zero $"blocks.{l}.attn.W_O" (meanOver -1L w.[$"blocks.{l}.attn.W_O"])
                zero $"blocks.{l}.attn.b_O" (meanOver -1L w.[$"blocks.{l}.attn.b_O"])
                if not cfg.attn_only then
                    zero $"blocks.{l}.mlp.W_out" (meanOver -1L w.[$"blocks.{l}.mlp.W_out"])
                    zero $"blocks.{l}.mlp.b_out" (meanOver -1L w.[$"blocks.{l}.mlp.b_out"])
        zero "unembed.W_U over the vocabulary" (meanOver -1L w.["unembed.W_U"])
        zero "unembed.b_U" (meanOver -1L w.["unembed.b_U"])
        for l in 0 .. cfg.n_layers - 1 do
            if maxAbs w.[$"blocks.{l}.attn.b_V"] <> 0.0 then failwith $"blocks.{l}.attn.b_V not folded"
        // The vacuity check: the unprocessed model's weights were not already centred.
        meanOver -1L (model.StateDict().["unembed.W_U"]) > 1e-3

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 10)>]
    member _.``a processed model saves and loads with the same logits`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        randomize model c.TokenSeed
        let foldLn, centring = optionsFor c.Config
        use processed = model.ProcessWeights(foldLn = foldLn, centerWritingWeights = centring)
        let path = Path.Combine(Path.GetTempPath(), $"processed-{Guid.NewGuid():N}.safetensors")
        try
            processed.Save path
            use loaded = HookedTransformer.Load path
            let tokens = tokensFor c
            use _ = torch.no_grad()
            loaded.Config = processed.Config && (loaded.forward tokens).eq(processed.forward tokens).all().item<bool>()
        finally File.Delete path

    [<Fact>]
    member _.``in float32 the logits of a processed model stay within 1e-4`` () =
        use _scope = torch.NewDisposeScope()
        let cfg = DecoderConfig(d_model = 32, n_layers = 2, n_heads = 4, d_mlp = 64, d_vocab = 50, n_ctx = 16, seed = 2)
        use model = new HookedTransformer(cfg)
        randomize model 7
        use processed = model.ProcessWeights(centerUnembed = false)
        let tokens = torch.randint(50L, [| 4L; 16L |], generator = torch.Generator(3UL))
        use _ = torch.no_grad()
        let before = model.forward tokens
        let diff = maxAbs (before - processed.forward tokens)
        output.WriteLine $"float32: max |logit change| {diff:E2} (logits up to {maxAbs before:F1})"
        Assert.True(diff < 1e-4, $"max logit change {diff}")

    [<Fact>]
    member _.``steps a configuration does not define are refused with the reason`` () =
        use _scope = torch.NewDisposeScope()
        let cfg norm experts =
            DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 16, d_vocab = 7, n_ctx = 4, normalization_type = norm,
                          n_experts = experts, experts_per_token = (if experts > 0 then 1 else 0))
        use rms = new HookedTransformer(cfg "RMS" 0)
        let e = Assert.Throws<ArgumentException>(fun () -> rms.ProcessWeights() |> ignore)
        Assert.Contains("center_writing_weights needs every reader of the residual stream to centre it", e.Message)
        Assert.Contains("'RMS'", e.Message)
        use folded = rms.ProcessWeights(centerWritingWeights = false)
        Assert.Equal("RMSPre", folded.Config.normalization_type)
        use moe = new HookedTransformer(cfg "LN" 2)
        let e = Assert.Throws<ArgumentException>(fun () -> moe.ProcessWeights() |> ignore)
        Assert.Contains("fold_ln is not defined for mixture-of-experts blocks under LN", e.Message)
        use none = new HookedTransformer(cfg "none" 0)
        Assert.Throws<ArgumentException>(fun () -> none.ProcessWeights() |> ignore) |> ignore
