/// Attribution patching is exact where the metric is linear in the patched activation, and only an estimate elsewhere.
module MechInterp.Analysis.Tests.AttributionPatchingTests

open Xunit
open TorchSharp
open MechInterp.Model
open MechInterp.Analysis.Patching.ActivationPatching
open MechInterp.Analysis.Patching.AttributionPatching

/// A logit difference at the last position, averaged over the batch: linear in the logits.
let metric (logits: torch.Tensor) = (logits.select(1, -1L).select(1, 2L) - logits.select(1, -1L).select(1, 4L)).mean()

let toFloat (logits: torch.Tensor) = (metric logits).to_type(torch.ScalarType.Float64).item<float>()

/// One layer with no norm: the logits are linear in the last sublayer's output (and attn_out is linear in z).
let linearModel attnOnly =
    let model =
        new HookedTransformer(
            DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 16, attn_only = attnOnly, normalization_type = "none",
                          d_vocab = 7, n_ctx = 6, init_range = 0.6, seed = 4))
    model.``to``(torch.ScalarType.Float64) |> ignore
    let g = torch.Generator(9UL)
    model, torch.randint(7L, [| 3L; 6L |], generator = g), torch.randint(7L, [| 3L; 6L |], generator = g)

let maxDiff (a: PatchingResult) (b: PatchingResult) =
    Seq.max [ for r in 0 .. Array2D.length1 a.Values - 1 do for c in 0 .. Array2D.length2 a.Values - 1 -> abs (a.Values.[r, c] - b.Values.[r, c]) ]

let spread (a: PatchingResult) =
    Seq.max [ for r in 0 .. Array2D.length1 a.Values - 1 do for c in 0 .. Array2D.length2 a.Values - 1 -> abs (a.Values.[r, c] - a.Corrupted) ]

[<Collection("torch")>]
type AttributionPatchingTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``on a model linear in the patched activation attribution patching equals exact patching`` () =
        use _scope = torch.NewDisposeScope()
        let model, clean, corrupted = linearModel true
        use model = model
        let estimates = attributionPatching model clean corrupted metric
        let find name = estimates |> List.find (fun p -> p.Component = name)
        for exact, name in [ patchLayerPosition model clean corrupted toFloat "attn_out", "attn_out"
                             patchHeads model clean corrupted toFloat, "head (attn.hook_z)" ] do
            let estimate = find name
            Assert.True(spread exact > 1e-3, $"{name}: exact patching moves the metric by at most {spread exact}: the comparison would be vacuous")
            Assert.True(maxDiff exact estimate < 1e-9, $"{name}: AtP differs from exact patching by {maxDiff exact estimate}")
            Assert.Equal(exact.Clean, estimate.Clean, 9)
            Assert.Equal(exact.Corrupted, estimate.Corrupted, 9)
        // resid_pre feeds the attention pattern, a softmax: there the estimate is only first order.
        let exactPre = patchLayerPosition model clean corrupted toFloat "resid_pre"
        Assert.True(maxDiff exactPre (find "resid_pre") > 1e-4, "resid_pre reads through the softmax; AtP should not be exact there")

        let dense, clean, corrupted = linearModel false
        use dense = dense
        let estimate = attributionPatching dense clean corrupted metric |> List.find (fun p -> p.Component = "mlp_out")
        let exact = patchLayerPosition dense clean corrupted toFloat "mlp_out"
        Assert.True(spread exact > 1e-3)
        Assert.True(maxDiff exact estimate < 1e-9, $"mlp_out: AtP differs from exact patching by {maxDiff exact estimate}")

    [<Fact>]
    member _.``attribution patching leaves the parameters and their gradients as they were`` () =
        use _scope = torch.NewDisposeScope()
        let model, clean, corrupted = linearModel false
        use model = model
        attributionPatching model clean corrupted metric |> ignore
        for p in model.parameters() do
            Assert.True(p.requires_grad)
            Assert.True(isNull p.grad)
        Assert.DoesNotContain(model.Hooks.Points.Values, fun p -> p.IsActive)

    [<Fact>]
    member _.``the comparison reports correlation and the worst misses`` () =
        let result values =
            { Component = "c"; RowLabels = [| "L0"; "L1" |]; ColumnLabels = [| "0"; "1" |]; Values = values
              Recovered = values; Clean = 1.0; Corrupted = 0.0 }
        let exact = result (array2D [ [ 0.0; 1.0 ]; [ 2.0; 3.0 ] ])
        let c = compare 1 exact (result (array2D [ [ 0.0; 2.0 ]; [ 4.0; 6.5 ] ]))
        Assert.True(c.Correlation > 0.99 && c.Correlation < 1.0)
        Assert.Equal<(string * float * float) list>([ "L1 1", 3.0, 6.5 ], c.WorstMisses)
        Assert.Equal(-1.0, (compare 0 exact (result (array2D [ [ 3.0; 2.0 ]; [ 1.0; 0.0 ] ]))).Correlation, 9)
