/// Both residual experiments end to end at a toy size: they run, and their results files carry
/// the fields the issue asks for with values that make sense.
module MechInterp.Analysis.Tests.ExperimentSmokeTests

open Xunit
open System.Text.Json.Nodes
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Discretization

/// The field of a JSON object, failing with the key when the object or the field is missing.
let private field (key: string) (node: JsonNode | null) : JsonNode =
    match node with
    | null -> failwith $"no object to read '{key}' from"
    | n ->
        match n.[key] with
        | null -> failwith $"'{key}' is missing or null in {n.ToJsonString()}"
        | v -> v

let private count (node: JsonNode) = node.AsArray().Count

let private tiny: InductionRun.InductionSettings =
    { DModel = 16; Layers = 2; Heads = 2; Vocab = 12; MaxRepeat = 4; MinRepeat = 2; PositionalEmbedding = "standard"; Steps = 20; BatchSize = 8
      LearningRate = 3e-3; SnapshotEvery = 10; EvalBatchSize = 8; LearnedRepeatLoss = 1.0; ConvergenceWindow = 10 }

[<Collection("torch")>]
type ExperimentSmokeTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``the induction study runs and reports snapshots, scores and patching`` () =
        let study = InductionStudy.run tiny 0 4 None ignore
        Assert.Equal(20, study.Run.Losses.Length)
        Assert.Equal<int list>([ 0; 10; 20 ], study.Run.Snapshots |> List.map (fun s -> s.Step))
        Assert.True(study.End.DecompositionError < 1e-5, $"decomposition error {study.End.DecompositionError}")
        Assert.Equal<string[]>([| "0_pre"; "1_pre"; "final_post" |], study.End.LogitLens |> Array.map fst)
        // resid_pre, attn_out, heads: an attention-only model has no mlp_out sweep
        Assert.Equal<string list>([ "resid_pre"; "attn_out"; "head (attn.hook_z)" ], study.End.Patching |> List.map (fun p -> p.Component))
        let json = InductionStudy.toJson study
        Assert.Equal(3, json |> field "snapshots" |> count)
        Assert.Equal(2, json |> field "final_induction_scores" |> count)

    [<Fact>]
    member _.``experiment_1 reports every variant, and runs that cannot learn in 20 steps as neither learned nor converged`` () =
        let settings =
            { Experiment1.quickSettings with
                Training = tiny
                Seeds = [ 0; 1 ]
                StraightThroughLevels = [ 4 ]
                BlockedLevels = [ 4 ]
                CodebookSizes = [ 4 ] }
        let result = Experiment1.run settings ignore
        Assert.Equal<string list>([ "standard"; "ste-k4"; "no-ste-k4"; "clamp-only"; "vq-4" ], result.Variants |> List.map (fun v -> v.Variant.Name))
        // Twenty steps of a d_model-16 model cannot bring the repeat loss (≈ ln 11 = 2.4 nats at the start) under
        // 1 nat: no run may be reported learned or converged, and every variant's verdict says so.
        Assert.Equal(20, result.StepsRun)
        for v in result.Variants do
            for run in v.Runs do
                Assert.True(run.FinalRepeatLoss > 1.0, $"{v.Variant.Name} seed {run.Seed}: repeat loss {run.FinalRepeatLoss}")
                Assert.Equal(None, run.LearnedStep)
                Assert.Equal(None, run.ConvergedStep)
        for v in List.tail result.Variants do
            Assert.StartsWith("does not converge within 20 steps", v.Verdict)
            // every run censored in both groups: the log-rank statistic is 0 and p = 1
            Assert.Equal(1.0, v.LearnedVersusStandard.Value.PValue)
        // the codebook variant reports its usage per quantized block: at most its 4 entries
        let vq = result.Variants |> List.last
        for run in vq.Runs do
            Assert.Equal(2, run.Analysis.CodebookUsage.Length)
            for _, used, perplexity in run.Analysis.CodebookUsage do
                Assert.InRange(used, 1, 4)
                Assert.InRange(perplexity, 1.0, 4.0 + 1e-9)
        let json = Experiment1.toJson result
        Assert.Equal(20, (json |> field "steps_run").GetValue<int>())
        Assert.Equal(10, (json |> field "instances_per_step").GetValue<int>())
        let variants = (json |> field "variants").AsArray()
        for v in variants do
            Assert.Equal(2, v |> field "final_loss" |> count)
            Assert.Equal(2, v |> field "final_loss_ci95" |> count)
            Assert.Equal(2, v |> field "learned_step" |> count)
            Assert.Equal(0, (v |> field "learned").GetValue<int>())
            Assert.Equal(0, (v |> field "converged").GetValue<int>())
        Assert.True(isNull (variants.[0] |> function null -> null | v -> v.["versus_standard"]))
        // two seeds against two: C(4, 2) = 6 relabellings, so the smallest possible p is 2/6
        Assert.Equal(6, (variants.[1] |> field "versus_standard" |> field "permutations").GetValue<int>())
        Assert.InRange((variants.[1] |> field "versus_standard" |> field "p_value").GetValue<float>(), 2.0 / 6.0 - 1e-9, 1.0)
        Assert.True(result.Variants.[1].Runs.Head.Analysis.DecompositionError > 0.0)
        Assert.Equal<string list>([ "none"; "grid"; "grid"; "clamp"; "codebook" ],
                                  [ for v in variants -> (v |> field "kind").GetValue<string>() ])

    [<Fact>]
    member _.``a run of experiment_1's batch is the run the induction study trains alone`` () =
        // The standard variant of seed 0 shares its batch with 5 other runs; the study trains seed 0 by itself.
        let settings =
            { Experiment1.quickSettings with
                Training = { tiny with Steps = 10; SnapshotEvery = 5 }
                Seeds = [ 0; 1 ]
                StraightThroughLevels = [ 4 ]
                BlockedLevels = []
                ClampOnly = false
                CodebookSizes = [ 4 ] }
        let batched = Experiment1.run settings ignore
        let alone = InductionStudy.run settings.Training 0 4 None ignore
        let together = batched.Variants.Head.Runs.Head.Run.Losses
        Assert.Equal(10, together.Length)
        Assert.Equal(6, batched.Variants |> List.sumBy (fun v -> v.Runs.Length))
        let worst = Array.map2 (fun (a: float) b -> abs (a - b)) together alone.Run.Losses |> Array.max
        Assert.True(worst < 1e-4, $"seed 0's losses in the batch and alone differ by up to {worst}")
