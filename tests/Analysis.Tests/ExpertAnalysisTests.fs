/// The specialization statistics on tables whose answers are known, and the hash-router baseline.
module MechInterp.Analysis.Tests.ExpertAnalysisTests

open System
open Xunit
open FsCheck.Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Experts
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Experts.Specialization
open System.Text.Json.Nodes

[<Fact>]
let ``NMI is 1 for a relabelling and 0 for independence`` () =
    // Experts 0,1,2 ↔ categories 2,0,1: a bijection.
    let choice = [| 0; 1; 2; 0; 1; 2 |]
    let labels = [| 2; 0; 1; 2; 0; 1 |]
    Assert.Equal(1.0, nmi (contingency 3 3 choice labels), 12)
    // Every expert sees every category equally often.
    let independent = array2D [ [ 5; 5 ]; [ 3; 3 ] ]
    Assert.Equal(0.0, nmi independent, 12)
    Assert.Equal(0.0, mutualInformation independent, 12)

[<Fact>]
let ``NMI of a hand-worked table`` () =
    // Joint [[2, 0], [1, 1]] over 4 tokens: H(E) = H(F) = ln 2 ... F marginal (3/4, 1/4).
    let t = array2D [ [ 2; 0 ]; [ 1; 1 ] ]
    let hE = log 2.0
    let hF = -(0.75 * log 0.75 + 0.25 * log 0.25)
    let mi = 0.5 * log (0.5 / (0.5 * 0.75)) + 0.25 * log (0.25 / (0.5 * 0.75)) + 0.25 * log (0.25 / (0.5 * 0.25))
    Assert.Equal(mi, mutualInformation t, 12)
    Assert.Equal(2.0 * mi / (hE + hF), nmi t, 12)
    // Purity: expert 0's top category has 2 of its 2 tokens, expert 1's 1 of 2 → 3/4.
    Assert.Equal(0.75, purity t, 12)

[<Fact>]
let ``conditional tables and lift read off the counts`` () =
    let t = array2D [ [ 3; 1 ]; [ 0; 4 ] ]
    let eGivenC = expertGivenCategory t
    Assert.Equal(1.0, eGivenC.[0, 0], 12)          // category 0 only ever goes to expert 0
    Assert.Equal(0.2, eGivenC.[1, 0], 12)          // category 1: 1 of 5 to expert 0
    let cGivenE = categoryGivenExpert t
    Assert.Equal(0.75, cGivenE.[0, 0], 12)
    let l = lift 3.0 t
    Assert.Equal(Math.Log2(0.75 / (3.0 / 8.0)), l.[0, 0], 12)
    Assert.Equal(-3.0, l.[1, 0], 12)               // a zero count is clipped to −cap
    Assert.Equal<float[]>([| 0.5; 0.5 |], load 2 [| 0; 1; 1; 0 |])

[<Fact>]
let ``consecutive same-expert rate counts only neighbours in one sequence`` () =
    // Sequence 0: experts 1,1,2; sequence 1: 2,2. Pairs: (1,1) same, (1,2) not, (2,2) same; the seam is not a pair.
    let rate = consecutiveSameRate [| 1; 1; 2; 2; 2 |] [| 0; 0; 0; 1; 1 |] [| 0; 1; 2; 0; 1 |]
    Assert.Equal(2.0 / 3.0, rate, 12)

[<Fact>]
let ``the permutation test rejects dependence and keeps independence`` () =
    let rng = Random(1)
    let labels = Array.init 400 (fun i -> i % 4)
    let dependent = specialization rng 200 4 4 (labels |> Array.map (fun c -> (c + 1) % 4)) labels
    Assert.Equal(1.0 / 201.0, dependent.Nmi.PValue, 12)
    Assert.Equal(1.0 / 201.0, dependent.Purity.PValue, 12)
    Assert.True(dependent.Nmi.NullMean < 0.05, $"null NMI {dependent.Nmi.NullMean}")
    let noise = Array.init 400 (fun _ -> rng.Next 4)
    let independent = specialization rng 200 4 4 noise labels
    Assert.True(independent.Nmi.PValue > 0.01, $"independent choice got p = {independent.Nmi.PValue}")

[<Property(MaxTest = 100)>]
let ``NMI and purity stay in range and NMI is symmetric`` (pairs: (byte * byte) list) =
    let choice = pairs |> List.map (fun (a, _) -> int a % 5) |> Array.ofList
    let labels = pairs |> List.map (fun (_, b) -> int b % 3) |> Array.ofList
    let t = contingency 5 3 choice labels
    let transposed = contingency 3 5 labels choice
    let n, p = nmi t, purity t
    n >= 0.0 && n <= 1.0 && abs (n - nmi transposed) < 1e-12
    && (pairs.IsEmpty || (p > 0.0 && p <= 1.0 + 1e-12))

[<Fact>]
let ``contingency names a bad category and its token`` () =
    let e = Assert.Throws<ArgumentException>(fun () -> contingency 2 2 [| 0; 1 |] [| 0; 5 |] |> ignore)
    Assert.Contains("category 5 at token 1", e.Message)

[<Collection("torch")>]
type HashRouterTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``the hash router forces routing by token id with distinct experts and equal gates``() =
        use _scope = torch.NewDisposeScope()
        let cfg = DecoderConfig(d_model = 8, n_layers = 2, n_heads = 2, d_mlp = 4, d_vocab = 10, n_ctx = 6, n_experts = 4,
                                experts_per_token = 2, seed = 0)
        use model = new HookedTransformer(cfg)
        let router = Subjects.HashRouting(cfg, 3)
        let table = router.Table(1).data<int64>().ToArray() |> Array.chunkBySize 2
        Assert.All(table, fun row -> Assert.NotEqual(row.[0], row.[1]))
        let tokens = torch.tensor([| 3L; 7L; 3L; 0L; 9L; 7L |]).view(1L, 6L)
        let names = set [ HookNames.ExpertIndices(1); HookNames.ExpertWeights(1) ]
        let struct (_, cache) = model.RunWithCache(tokens, (fun n -> names.Contains n), router.Hooks tokens)
        use cache = cache
        let indices = cache.[HookNames.ExpertIndices(1)]                                    // [batch, pos, k]
        let index = indices.reshape(-1L, 2L).data<int64>().ToArray() |> Array.chunkBySize 2
        Assert.Equal<int64[]>(table.[3], index.[0])
        Assert.Equal<int64[]>(index.[0], index.[2])          // same token, same experts
        Assert.Equal<int64[]>(table.[9], index.[4])
        // Its expert weights are a distribution: 1/k on the token's experts (its gates), 0 elsewhere.
        let weights = cache.[HookNames.ExpertWeights(1)]                                    // [batch, pos, E]
        Assert.All(weights.gather(-1L, indices).reshape(-1L).data<float32>().ToArray(), fun g -> Assert.Equal(0.5f, g))
        Assert.All(weights.sum(-1L).reshape(-1L).data<float32>().ToArray(), fun s -> Assert.Equal(1.0f, s))

[<Collection("torch")>]
type MoeStudyTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``a tiny study writes the issue's moe.json fields and a report section``() =
        let setup =
            { MoeStudy.quickSetup with
                DModel = 8; Layers = 1; Heads = 2; Experts = 2; ExpertDMlp = 4; SequenceLength = 8
                Steps = 3; BatchSize = 2; AnalysisBatch = 3; Shuffles = 5; Seeds = [ 0 ] }
        let toy = { MoeStudy.quickToy with Features = 10; Steps = 3; BatchSize = 8 }
        let checkpoint = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"moe-{System.Guid.NewGuid():N}.safetensors")
        let study = MoeStudy.run ignore setup toy (Some checkpoint)
        // The trained MoE of the first seed is saved as an ordinary model that loads back.
        (try
            use saved = MechInterp.Model.HookedTransformer.Load checkpoint
            Assert.False(saved.IsBatched)
            Assert.Equal(setup.Experts, saved.Config.n_experts)
         finally System.IO.File.Delete checkpoint)
        let json = MoeStudy.toJson study
        // three steps learn no rule: no model may be reported learned or converged
        for m in study.Models do
            match m.Training with
            | Some t ->
                Assert.False(t.Convergence.Learned, $"{Subjects.kindName m.Kind} learned in 3 steps")
                Assert.Equal(3, t.StepsRun)
            | None -> Assert.Equal(Subjects.Untrained, m.Kind)
        let features = json.["features"].AsArray() |> Seq.map (fun n -> n.GetValue<string>()) |> Set.ofSeq
        Assert.Equal<Set<string>>(set [ "token_class"; "number"; "position_parity"; "inside_brackets"; "next_rule" ], features)
        let models = json.["models"].AsArray()
        Assert.Equal(4, models.Count)                                       // 4 kinds × 1 seed × 1 layer
        Assert.Equal<Set<string>>(set [ "trained"; "untrained"; "hash_router"; "dense" ],
                                  models |> Seq.map (fun m -> m.["name"].GetValue<string>()) |> Set.ofSeq)
        for m in models do
            for field in [ "nmi"; "purity"; "p_value" ] do
                Assert.Equal(5, m.[field].AsObject().Count)
        let ablation = json.["ablation"]
        Assert.Equal(2, ablation.["experts"].AsArray().Count)
        Assert.Equal(20, ablation.["features"].AsArray().Count)            // every category of every feature
        Assert.Equal(2, ablation.["delta_loss"].AsArray().Count)
        // One seed gives no comparison over seeds: every corrected p is 1 and no feature can be called specialized.
        for v in MoeSection.verdicts study do
            Assert.Equal(1.0, v.BothP)
            Assert.Equal(1.0, v.CausalP)
            Assert.NotEqual(MoeSection.Specializes, MoeSection.level v)
        Assert.False((MoeSection.answer study).Verdict.StartsWith "Yes")
        let section = MoeSection.section study
        Assert.Equal("moe", section.Id)
        Assert.True(section.Paragraphs |> List.exists (fun p -> p.StartsWith "Conclusion."))
        Assert.Equal(4, section.Figures.Head.Panels.Length)                // one heatmap per model


type VerdictLevelTests() =

    [<Fact>]
    member _.``a feature's level follows the Holm-adjusted p-values and the every-seed check`` () =
        let causal = Significance.signFlipTest [ 0.02; 0.03; 0.01; 0.04; 0.0; 0.02; 0.05; 0.01 ]
        let v : MoeSection.Verdict =
            { Layer = 0; Feature = "number"; Significant = true; AboveBaselines = []; Causal = Some causal
              TrainedNmi = 0.4; BaselineNmi = []; VsHash = None; VsDense = None; HashP = 0.01; BothP = 0.03; CausalP = 0.04 }
        Assert.Equal(MoeSection.Specializes, MoeSection.level v)
        Assert.Equal(MoeSection.AboveHash, MoeSection.level { v with BothP = 0.06 })
        Assert.Equal(MoeSection.AboveHash, MoeSection.level { v with CausalP = 0.07 })
        Assert.Contains("claimed > other in 7 of 8 seeds, Holm p = 0.070", MoeSection.featureVerdict { v with CausalP = 0.07 })
        Assert.Equal(MoeSection.Informative, MoeSection.level { v with HashP = 0.2; BothP = 0.2 })
        Assert.Equal(MoeSection.NotSpecialized, MoeSection.level { v with Significant = false })
        Assert.Contains("Holm p = 0.060", MoeSection.featureVerdict { v with BothP = 0.06 })

[<Collection("torch")>]
type RuleAccuracyTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``rule accuracy is 1 for the true next token, 0 for a constant guess, and agreement needs the number`` () =
        use _scope = TorchSharp.torch.NewDisposeScope()
        let task = MechInterp.Data.ToyLanguage(24)
        use batch = task.Sample(16, System.Random(5))
        let v = int64 task.VocabSize
        let next = TorchSharp.torch.cat([| batch.Tokens.narrow(1L, 1L, 23L); batch.Tokens.narrow(1L, 0L, 1L) |], 1L)   // [batch, pos]
        let perfect = TorchSharp.torch.nn.functional.one_hot(next, v).to_type(TorchSharp.torch.float32)               // [batch, pos, vocab]
        let acc = Rules.accuracies perfect batch
        for r in Rules.rules do Assert.Equal(1.0f, acc.[r].item<float32>())
        // Always predicting BOS satisfies no rule.
        let bos = TorchSharp.torch.zeros([| 16L; 24L; v |]).index_fill(2L, TorchSharp.torch.tensor 0L, TorchSharp.Scalar.op_Implicit 1.0f)
        let none = Rules.accuracies bos batch
        for r in Rules.rules do Assert.Equal(0.0f, none.[r].item<float32>())
        // The right verb class of the wrong number fails agreement: move every verb to the other number.
        let isVerb = next.ge(TorchSharp.Scalar.op_Implicit (int64 MechInterp.Data.ToyLanguage.FirstVerb))
                         .logical_and(next.lt(TorchSharp.Scalar.op_Implicit (int64 MechInterp.Data.ToyLanguage.FirstAdjective)))
        let verbIndex = next.sub(TorchSharp.Scalar.op_Implicit (int64 MechInterp.Data.ToyLanguage.FirstVerb))
        let flipped = verbIndex.add(TorchSharp.Scalar.op_Implicit 6L).remainder(TorchSharp.Scalar.op_Implicit 12L)
                          .add(TorchSharp.Scalar.op_Implicit (int64 MechInterp.Data.ToyLanguage.FirstVerb))
        let wrongNumber = TorchSharp.torch.nn.functional.one_hot(TorchSharp.torch.where(isVerb, flipped, next), v).to_type(TorchSharp.torch.float32)
        let wrong = Rules.accuracies wrongNumber batch
        Assert.Equal(0.0f, wrong.["agreement"].item<float32>())
        Assert.Equal(1.0f, wrong.["end_of_sentence"].item<float32>())
        // Batched logits give one accuracy per instance.
        let stacked = Rules.accuracies (TorchSharp.torch.stack([| perfect; bos |])) (MechInterp.Data.TokenBatch.Stack([| batch; batch |]))
        Assert.Equal<float32[]>([| 1.0f; 0.0f |], stacked.["counting"].data<float32>().ToArray())
