/// Ablation and patching on a hand-built model whose answers can be worked out on paper.
module MechInterp.Analysis.Tests.PatchingTests

open System
open Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Patching.Ablation
open MechInterp.Analysis.Patching.ActivationPatching
open MechInterp.Analysis.Residual.HeadScores
open MechInterp.Analysis.Statistics.Significance
open MechInterp.Analysis.Discretization.Quantization

/// One attention-only layer, no norm, d_model 2, vocab 2, one head: W_E = W_V = W_O = W_U = I, W_Q = W_K = 0
/// and no positions, so attention is uniform over the prefix and
/// logits[p] = e(t_p) + mean_{j ≤ p} e(t_j). Token 0 is e0 = [1, 0], token 1 is e1 = [0, 1].
let private averagingModel () =
    let cfg =
        DecoderConfig(d_model = 2, n_layers = 1, n_heads = 1, d_head = 2, attn_only = true, normalization_type = "none",
                      d_vocab = 2, n_ctx = 3, seed = 0)
    let model = new HookedTransformer(cfg)
    use _ = torch.no_grad()
    let eye = torch.eye 2L
    model.embed.W_E.copy_(eye) |> ignore
    model.pos_embed.W_pos.zero_() |> ignore
    let attn = model.blocks.[0].attn
    attn.W_Q.zero_() |> ignore
    attn.W_K.zero_() |> ignore
    attn.W_V.copy_(eye.unsqueeze(0L)) |> ignore
    attn.W_O.copy_(eye.unsqueeze(0L)) |> ignore
    model.unembed.W_U.copy_(eye) |> ignore
    model

let private tokens (rows: int64 list list) =
    torch.tensor(rows |> List.concat |> Array.ofList).reshape(int64 rows.Length, int64 rows.Head.Length)

/// logit 0 − logit 1 at the last position of the first sequence.
let private lastDiff (logits: torch.Tensor) =
    let row = logits.[0L, -1L]
    float (row.[0L].item<float32>() - row.[1L].item<float32>())

let private vec (t: torch.Tensor) = t.data<float32>().ToArray() |> Array.map float

[<Collection("torch")>]
type HandBuiltModelTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``the averaging model computes what it was built to compute`` () =
        use _scope = torch.NewDisposeScope()
        let model = averagingModel ()
        let logits = model.forward (tokens [ [ 0L; 1L; 1L ] ])
        // last position: e1 + (e0 + e1 + e1) / 3 = [1/3, 5/3]
        let last = vec logits.[0L, 2L]
        Assert.Equal(1.0 / 3.0, last.[0], 5)
        Assert.Equal(5.0 / 3.0, last.[1], 5)

    [<Fact>]
    member _.``zero, mean and resample ablation of attn_out give the worked-out logits`` () =
        use _scope = torch.NewDisposeScope()
        let model = averagingModel ()
        let input = tokens [ [ 0L; 0L; 0L ]; [ 1L; 1L; 1L ] ]
        let name = HookNames.AttnOut(0)
        let near expected (actual: float[]) = Array.forall2 (fun (e: float) a -> abs (e - a) < 1e-5) expected actual
        // zero: logits are the embeddings
        let zero = runAblated model input Zero name None
        Assert.True(near [| 1.0; 0.0 |] (vec zero.[0L, 2L]))
        // mean over the batch of attn_out = ([1,0] + [0,1]) / 2
        let mean = runAblated model input Mean name None
        Assert.True(near [| 1.5; 0.5 |] (vec mean.[0L, 2L]))
        Assert.True(near [| 0.5; 1.5 |] (vec mean.[1L, 2L]))
        // resample with two inputs swaps them: sequence 0 gets attn_out [0, 1]
        let resampled = runAblated model input (Resample 0) name None
        Assert.True(near [| 1.0; 1.0 |] (vec resampled.[0L, 1L]))
        // head 0 is the only head: ablating it is ablating the whole layer
        let zeroHead = runAblated model input Zero (HookNames.Z 0) (Some 0)
        Assert.True(near [| 1.0; 0.0 |] (vec zeroHead.[0L, 2L]))
        Assert.Contains("head 1 is out of range", (Assert.Throws<ArgumentException>(fun () ->
            runAblated model input Zero (HookNames.Z 0) (Some 1) |> ignore)).Message)
        Assert.Contains("at least 2", (Assert.Throws<ArgumentException>(fun () ->
            runAblated model (tokens [ [ 0L; 0L; 0L ] ]) (Resample 0) name None |> ignore)).Message)

    [<Fact>]
    member _.``patching each position of resid_pre and attn_out recovers the worked-out share`` () =
        use _scope = torch.NewDisposeScope()
        let model = averagingModel ()
        let clean, corrupted = tokens [ [ 0L; 0L; 0L ] ], tokens [ [ 1L; 1L; 1L ] ]
        let resid = patchLayerPosition model clean corrupted lastDiff "resid_pre"
        Assert.Equal(2.0, resid.Clean, 5)
        Assert.Equal(-2.0, resid.Corrupted, 5)
        // patching position 0 or 1 changes only the average: e1 + [1/3, 2/3] → −4/3;
        // position 2 changes the token and the average: e0 + [1/3, 2/3] → 2/3
        Assert.Equal(-4.0 / 3.0, resid.Values.[0, 0], 5)
        Assert.Equal(-4.0 / 3.0, resid.Values.[0, 1], 5)
        Assert.Equal(2.0 / 3.0, resid.Values.[0, 2], 5)
        Assert.Equal((2.0 / 3.0 + 2.0) / 4.0, resid.Recovered.[0, 2], 5)
        let attn = patchLayerPosition model clean corrupted lastDiff "attn_out"
        // attn_out at an earlier position does not reach the last one in a one-layer model
        Assert.Equal(-2.0, attn.Values.[0, 0], 5)
        Assert.Equal(0.0, attn.Values.[0, 2], 5)
        let heads = patchHeads model clean corrupted lastDiff
        Assert.Equal(0.0, heads.Values.[0, 0], 5)
        Assert.Equal<string[]>([| "H0" |], heads.ColumnLabels)
        Assert.Contains("no hook 'blocks.0.hook_mlp_out'", (Assert.Throws<ArgumentException>(fun () ->
            patchLayerPosition model clean corrupted lastDiff "mlp_out" |> ignore)).Message)

/// Scores and quantization use libtorch: they wait for the fixture that loads it, as every torch test does.
[<Collection("torch")>]
type ScoreAndQuantizationTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``head scores read the diagonals they name`` () =
        use _scope = torch.NewDisposeScope()
        // 7 positions, period 3: BOS a b c a b c. Head 0 attends to the previous token; the induction head attends
        // from each query q of the repeat (q ≥ 4) to q − 3 + 1, the token after q's earlier copy, and to BOS before it.
        let n = 7L
        let previous = torch.zeros(n, n)
        for q in 0L .. n - 1L do previous.[q, max 0L (q - 1L)] <- torch.tensor 1.0f
        let induction = torch.zeros(n, n)
        for q in 0L .. n - 1L do induction.[q, (if q >= 4L then q - 2L else 0L)] <- torch.tensor 1.0f
        let uniform = torch.ones(n, n).tril().div(torch.ones(n, n).tril().sum(-1L, keepdim = true))
        let pattern = torch.stack([| previous; induction; uniform |]).unsqueeze(0L)     // [1, head, q, k]
        let prev = vec (previousTokenScore pattern)
        Assert.Equal(1.0, prev.[0], 6)
        Assert.Equal(1.0 / 6.0, prev.[1], 6)                                            // only query 1, whose BOS is its previous token
        Assert.Equal((List.sum [ for q in 2 .. 7 -> 1.0 / float q ]) / 6.0, prev.[2], 6)
        let induct = vec (inductionScore 3 pattern)
        Assert.Equal(0.0, induct.[0], 6)
        Assert.Equal(1.0, induct.[1], 6)
        Assert.Equal((1.0 / 5.0 + 1.0 / 6.0 + 1.0 / 7.0) / 3.0, induct.[2], 6)

    [<Fact>]
    member _.``attention to given keys averages only the queries that have one`` () =
        use _scope = torch.NewDisposeScope()
        // 2 sequences, 4 positions, 1 head with a known pattern; keys differ per sequence (varying period).
        let pattern = torch.tensor([| 1.0f; 0.0f; 0.0f; 0.0f
                                      0.5f; 0.5f; 0.0f; 0.0f
                                      0.2f; 0.3f; 0.5f; 0.0f
                                      0.1f; 0.2f; 0.3f; 0.4f |]).reshape(1L, 1L, 4L, 4L).expand(2L, 1L, 4L, 4L)
        let keys = tokens [ [ -1L; -1L; 1L; 2L ]; [ -1L; -1L; -1L; 0L ] ]
        // (q2 → k1) 0.3, (q3 → k2) 0.3, (q3 → k0) 0.1: mean over 3 counted queries
        Assert.Equal((0.3 + 0.3 + 0.1) / 3.0, (vec (attentionTo keys pattern)).[0], 6)
        let e = Assert.Throws<System.ArgumentException>(fun () -> attentionTo (tokens [ List.replicate 4 -1L; List.replicate 4 -1L ]) pattern |> ignore)
        Assert.Contains("no query has a key", e.Message)
        Assert.Throws<System.ArgumentException>(fun () -> attentionTo (torch.zeros([| 2L; 3L |], dtype = torch.ScalarType.Int64)) pattern |> ignore) |> ignore

    [<Fact>]
    member _.``the permutation test finds a clear difference and not a null one`` () =
        let a = [ 1.0; 1.1; 0.9; 1.05; 0.95 ]
        let clear = permutationTest a [ 2.0; 2.1; 1.9; 2.05; 1.95 ]
        Assert.Equal(252, clear.Permutations)
        Assert.Equal(2.0 / 252.0, clear.PValue, 9)
        Assert.Equal(1.0, clear.Difference, 9)
        let same = permutationTest a a
        Assert.Equal(1.0, same.PValue, 9)
        // 16 against 16 seeds is past the exact limit (C(32, 16) = 6e8): the sample counts the observed labelling too,
        // so two groups that never overlap get 1 / 100,001 (only it and its mirror are as extreme), not 0.
        let low, high = [ for i in 0 .. 15 -> float i ], [ for i in 0 .. 15 -> 100.0 + float i ]
        let sampled = permutationTest low high
        Assert.Equal(100_001, sampled.Permutations)
        Assert.Equal(1.0 / 100_001.0, sampled.PValue, 12)

    [<Fact>]
    member _.``the sign-flip test counts every assignment of signs and asks no unanimity`` () =
        // Eight positive differences: only the observed signs reach the observed sum, p = 1/256.
        let all = signFlipTest [ 0.1; 0.2; 0.3; 0.4; 0.5; 0.6; 0.7; 0.8 ]
        Assert.Equal(256, all.Flips)
        Assert.Equal(1.0 / 256.0, all.PValue, 12)
        Assert.Equal(8, all.Positive)
        // A tie (0) among them: flipping it changes nothing, so two assignments reach the sum.
        Assert.Equal(2.0 / 256.0, (signFlipTest [ 0.0; 0.2; 0.3; 0.4; 0.5; 0.6; 0.7; 0.8 ]).PValue, 12)
        // One small negative among large positives: the p-value is the share of the 32 sign assignments, counted by brute force.
        let d = [| 1.0; 1.0; 1.0; -0.1; 0.6 |]
        let brute =
            [ for signs in 0 .. 31 -> Array.mapi (fun i x -> if (signs >>> i) &&& 1 = 1 then -x else x) d |> Array.sum ]
            |> List.filter (fun sum -> sum >= Array.sum d - 1e-12) |> List.length
        Assert.Equal(float brute / 32.0, (signFlipTest d).PValue, 12)
        // Symmetric differences lean nowhere.
        Assert.True((signFlipTest [ -0.3; 0.3; -0.1; 0.1 ]).PValue > 0.5)
        // Past 17 pairs the flips are sampled, the observed one among them: p is never 0.
        let sampled = signFlipTest [ for i in 1 .. 20 -> float i ]
        Assert.Equal(100_001, sampled.Flips)
        Assert.Equal(1.0 / 100_001.0, sampled.PValue, 12)

    [<Fact>]
    member _.``Holm's adjustment multiplies the k-th smallest p by m - k + 1, keeps the order monotone and caps at 1`` () =
        // sorted: 0.005 × 4 = 0.02, 0.01 × 3 = 0.03, 0.03 × 2 = 0.06, 0.04 × 1 = 0.04 → raised to 0.06 (step-down)
        let adjusted = holm [ 0.01; 0.04; 0.03; 0.005 ]
        List.iter2 (fun (expected: float) actual -> Assert.Equal(expected, actual, 12)) [ 0.03; 0.06; 0.06; 0.02 ] adjusted
        Assert.Equal<float list>([ 1.0; 1.0 ], holm [ 0.5; 0.9 ])
        Assert.Equal<float list>([ 0.2 ], holm [ 0.2 ])
        Assert.Contains("[0, 1], got 1.5", (Assert.Throws<ArgumentException>(fun () -> holm [ 0.1; 1.5 ] |> ignore)).Message)

    [<Fact>]
    member _.``quantization rounds to k levels and its gradient path is as named`` () =
        use _scope = torch.NewDisposeScope()
        let x = torch.tensor([| -2.0f; -0.4f; 0.1f; 0.9f; 3.0f |]).requires_grad_()
        let q = { Levels = 3; Range = 1.0; Gradient = StraightThrough }
        let y = quantize q x
        Assert.Equal<float[]>([| -1.0; 0.0; 0.0; 1.0; 1.0 |], vec (y.detach()))
        y.sum().backward()
        match x.grad with
        | null -> failwith "the straight-through path left no gradient"
        | grad -> Assert.Equal<float[]>([| 1.0; 1.0; 1.0; 1.0; 1.0 |], vec grad)
        let blocked = quantize { q with Gradient = Blocked } x
        Assert.False(blocked.requires_grad)
        Assert.Equal(2, vec (roundToGrid { q with Levels = 2 } x) |> Array.distinct |> Array.length)
        Assert.Contains("at least 2 levels, got 1", (Assert.Throws<ArgumentException>(fun () -> quantize { q with Levels = 1 } x |> ignore)).Message)
