// experiment_1: does forcing the residual stream onto a grid slow or stop learning?
// Trains the standard decoder and its quantized variants (straight-through and not) over several seeds
// with the same data order per seed, then prints final losses with 95% intervals, steps to threshold,
// permutation-test p-values and what the residual analysis shows. From scratch: there is one model per
// variant and seed, so there is no single checkpoint to start from.
// Usage: dotnet fsi scripts/experiment1.fsx [--full] [--levels 2,16] [--codebooks 256] [--seeds 5] [--steps N] [--workers N]
#load "Prelude.fsx"

open System
open System.IO
open MechInterp.Analysis.Discretization.Experiment1

let args = fsi.CommandLineArgs |> Array.skip 1
let valueOf flag =
    match args |> Array.tryFindIndex ((=) flag) with
    | Some i when i + 1 < args.Length -> Some args.[i + 1]
    | _ -> None
let baseSettings = if args |> Array.contains "--full" then fullSettings else quickSettings
let settings =
    let levels = valueOf "--levels" |> Option.map (fun s -> s.Split(',') |> Array.map int |> List.ofArray)
    { baseSettings with
        StraightThroughLevels = defaultArg levels baseSettings.StraightThroughLevels
        CodebookSizes =
            valueOf "--codebooks" |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Array.map int |> List.ofArray)
            |> Option.defaultValue baseSettings.CodebookSizes
        Seeds = valueOf "--seeds" |> Option.map (fun n -> [ 0 .. int n - 1 ]) |> Option.defaultValue baseSettings.Seeds
        Training =
            match valueOf "--steps" with
            | Some n -> { baseSettings.Training with Steps = int n; SnapshotEvery = max 1 (int n / 4) }
            | None -> baseSettings.Training }

let workers = valueOf "--workers" |> Option.map int |> Option.defaultValue (max 1 MechInterp.Settings.Threads)
let result = runWith workers settings (printfn "%s")
for v in result.Variants do
    let lo, hi = v.FinalLoss.Ci95
    let steps = v.Runs |> List.map (fun r -> r.StepsToThreshold |> Option.map string |> Option.defaultValue "never")
    let p = v.VersusStandard |> Option.map (fun c -> sprintf "diff %+.3f, p = %.3f" c.Difference c.PValue) |> Option.defaultValue "baseline"
    printfn "%-12s final loss %.3f [%.3f, %.3f]  steps to %.2f: %s  (%s)" v.Variant.Name v.FinalLoss.Mean lo hi settings.Threshold (String.Join(", ", steps)) p
    for r in v.Runs do
        let l, h, s = r.Analysis.BestInduction
        let sl, sh, ss = r.Analysis.BestShiftedInduction
        printfn "    seed %d: best induction head L%dH%d %.2f, shifted L%dH%d %.2f, decomposition error %.1e" r.Seed l h s sl sh ss r.Analysis.DecompositionError
        for hook, used, perplexity in r.Analysis.CodebookUsage do printfn "      %s: %d entries used, perplexity %.1f" hook used perplexity

let json = Path.Combine("artifacts", "results", "experiment1.json")
Directory.CreateDirectory(Path.GetDirectoryName json) |> ignore
File.WriteAllText(json + ".tmp", (toJson result).ToJsonString(Text.Json.JsonSerializerOptions(WriteIndented = true)))
File.Move(json + ".tmp", json, true)
printfn "numbers in %s (%.0f s)" json result.Seconds
