/// The residual stream is the sum of its parts, attributions add up, and patching and ablation do
/// exactly what they claim, on random small models of every kind.
module MechInterp.Analysis.Tests.ResidualProperties

open System
open Xunit
open FsCheck.Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Analysis.Residual.Decomposition
open MechInterp.Analysis.Residual.LogitAttribution
open MechInterp.Analysis.Patching.Ablation
open MechInterp.Analysis.Patching.ActivationPatching
open MechInterp.Analysis.Tests.Generators

let private close (tolerance: float) (a: torch.Tensor) (b: torch.Tensor) =
    let err = (a - b).abs().max().item<float32>() |> float
    let scale = 1.0 + (b.abs().max().item<float32>() |> float)
    if err <= tolerance * scale then true
    else failwithf "max |a − b| = %g exceeds %g (scale %g)" err (tolerance * scale) scale

let private all = Func<string, bool>(fun _ -> true)

let private same (a: torch.Tensor) (b: torch.Tensor) = a.shape = b.shape && a.eq(b).all().item<bool>()

[<Collection("torch")>]
type ResidualProperties(_fixture: TorchFixture) =

    // The one test of the residual-sum invariant: residual decoders of every kind (dense, attention-only, MoE);
    // what a plain decoder satisfies instead is in HypothesisTests.
    [<Property(Arbitrary = [| typeof<ResidualModelArbitraries> |], MaxTest = 20)>]
    member _.``the components of the residual stream sum to the final residual`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        use model = new MechInterp.Model.HookedTransformer(c.Config)
        let struct (_, cache) = model.RunWithCache(ModelProperties.tokensFor c, all)
        use cache = cache
        let final = cache.[HookNames.ResidPost(c.Config.n_layers - 1)]
        let parts = decomposeResid model cache
        let heads = decomposeResidByHead model cache
        let acc = accumulatedResid model cache true
        close 1e-5 (parts.Stack.sum(0L)) final
        && close 1e-5 (heads.Stack.sum(0L)) final
        && close 0.0 acc.Stack.[-1L] final
        && parts.Labels.Length = int parts.Stack.shape.[0]

    [<Property(Arbitrary = [| typeof<ModelSpecArbitraries> |], MaxTest = 15)>]
    member _.``direct attributions of all components sum to the logit difference`` (spec: ModelSpec) =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        let model, tokens, other = build spec
        let struct (logits, cache) = model.RunWithCache(tokens, all)
        use cache = cache
        let metric = logitDifference model tokens other
        let total = evaluate metric logits
        let byLayer = directAttribution model cache (decomposeResid model cache) metric
        let byHead = directAttribution model cache (decomposeResidByHead model cache) metric
        let lens = logitLens model cache
        close 1e-4 (byLayer.Stack.sum(0L)) total
        && close 1e-4 (byHead.Stack.sum(0L)) total
        && close 1e-4 lens.Stack.[-1L] logits

    [<Property(Arbitrary = [| typeof<ModelSpecArbitraries> |], MaxTest = 15)>]
    member _.``patching clean into clean changes nothing, and every resid_pre everywhere recovers the clean logits`` (spec: ModelSpec) =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        let model, clean, corrupted = build spec
        let names = set [ for l in 0 .. spec.Layers - 1 -> HookNames.ResidPre(l) ]
        let struct (cleanLogits, cache) = model.RunWithCache(clean, Func<string, bool>(names.Contains))
        use cache = cache
        let positions = Some [ 0 .. spec.Positions - 1 ]
        let patchAll = [| for n in names -> patchHook n cache.[n] positions None |]
        let selfPatched = model.RunWithHooks(clean, patchAll)
        let restored = model.RunWithHooks(corrupted, patchAll)
        // One position of the last layer only, into the clean run: still the clean logits.
        let last = HookNames.ResidPre(spec.Layers - 1)
        let onePosition = model.RunWithHooks(clean, patchHook last cache.[last] (Some [ spec.Positions - 1 ]) None)
        close 0.0 selfPatched cleanLogits
        && close 0.0 restored cleanLogits
        && close 0.0 onePosition cleanLogits

    [<Property(Arbitrary = [| typeof<ModelSpecArbitraries> |], MaxTest = 15)>]
    member _.``ablating a layer changes nothing upstream of it`` (spec: ModelSpec) (layerPick: int) (kindPick: int) =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        let model, tokens, other = build spec
        let layer = abs layerPick % spec.Layers
        let kind =
            match abs kindPick % 4 with
            | 0 -> Zero
            | 1 -> Mean
            | 2 when spec.Batch >= 2 -> Resample 3
            | 2 -> Zero
            | _ -> ResampleFrom(torch.randn(int64 spec.Batch, int64 spec.Positions, int64 spec.DModel))
        let target = HookNames.AttnOut(layer)
        let order = model.Hooks.Names |> Array.ofSeq
        let struct (_, before) = model.RunWithCache(tokens, all)
        use before = before
        let struct (_, after) = model.RunWithCache(tokens, all, ablationHook kind target None)
        use after = after
        // Norm "none" runs no norm hooks: compare what the run recorded.
        let upstream = order.[0 .. Array.IndexOf(order, target) - 1] |> Array.filter before.ContainsKey
        // Exact equality (attention scores hold −∞ above the diagonal, so no subtraction).
        let unchangedUpstream = upstream |> Array.forall (fun n -> same after.[n] before.[n])
        let downstreamMoved =
            // Something after the ablated hook must see it, or the test would pass vacuously.
            (kind = Mean || kind = Resample 3) && spec.Batch = 1 || not (same after.[HookNames.ResidPost(spec.Layers - 1)] before.[HookNames.ResidPost(spec.Layers - 1)])
        // ... and the ablated activation really is what the ablation says.
        let expected = replacement kind before.[target]
        unchangedUpstream && downstreamMoved && close 1e-6 after.[target] expected
