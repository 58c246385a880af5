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
      LearningRate = 3e-3; SnapshotEvery = 10; EvalBatchSize = 8 }

[<Collection("torch")>]
type ExperimentSmokeTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``the induction study runs and reports snapshots, scores and patching`` () =
        let study = InductionStudy.run tiny 0 4 None
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
    member _.``experiment_1 reports every variant with one final loss and threshold step per seed`` () =
        let settings =
            { Experiment1.quickSettings with
                Training = tiny
                Seeds = [ 0; 1 ]
                StraightThroughLevels = [ 4 ]
                BlockedLevels = [ 4 ]
                CodebookSizes = [ 4 ]
                Threshold = 100.0 }
        let result = Experiment1.run settings ignore
        Assert.Equal<string list>([ "standard"; "ste-k4"; "no-ste-k4"; "clamp-only"; "vq-4" ], result.Variants |> List.map (fun v -> v.Variant.Name))
        // the codebook variant reports its usage per quantized block: at most its 4 entries
        let vq = result.Variants |> List.last
        for run in vq.Runs do
            Assert.Equal(2, run.Analysis.CodebookUsage.Length)
            for _, used, perplexity in run.Analysis.CodebookUsage do
                Assert.InRange(used, 1, 4)
                Assert.InRange(perplexity, 1.0, 4.0 + 1e-9)
        let json = Experiment1.toJson result
        Assert.Equal(100.0, (json |> field "threshold").GetValue<float>())
        let variants = (json |> field "variants").AsArray()
        for v in variants do
            Assert.Equal(2, v |> field "final_loss" |> count)
            Assert.Equal(2, v |> field "final_loss_ci95" |> count)
            // every run is below a threshold of 100 from its first averaged step
            match (v |> field "steps_to_threshold").AsArray().[0] with
            | null -> failwith "a threshold of 100 was never reached"
            | n -> Assert.Equal(1, n.GetValue<int>())
        Assert.True(isNull (variants.[0] |> function null -> null | v -> v.["versus_standard"]))
        // two seeds against two: C(4, 2) = 6 relabellings, so the smallest possible p is 2/6
        Assert.Equal(6, (variants.[1] |> field "versus_standard" |> field "permutations").GetValue<int>())
        Assert.InRange((variants.[1] |> field "versus_standard" |> field "p_value").GetValue<float>(), 2.0 / 6.0 - 1e-9, 1.0)
        Assert.True(result.Variants.[1].Runs.Head.Analysis.DecompositionError > 0.0)
        Assert.Equal<string list>([ "none"; "grid"; "grid"; "clamp"; "codebook" ],
                                  [ for v in variants -> (v |> field "kind").GetValue<string>() ])

    [<Fact>]
    member _.``experiment_1 gives the same numbers on one worker and on two`` () =
        let settings =
            { Experiment1.quickSettings with
                Training = { tiny with Steps = 10; SnapshotEvery = 10 }
                Seeds = [ 0; 1; 2 ]
                StraightThroughLevels = [ 4 ]
                BlockedLevels = []
                ClampOnly = false
                CodebookSizes = [ 4 ] }
        let losses (r: Experiment1.Experiment1Result) =
            [ for v in r.Variants do for run in v.Runs -> v.Variant.Name, run.Seed, run.Run.Losses ]
        let one = Experiment1.runWith 1 settings ignore
        let two = Experiment1.runWith 2 settings ignore
        Assert.Equal<(string * int * float[]) list>(losses one, losses two)
        Assert.Equal(9, (losses one).Length)
