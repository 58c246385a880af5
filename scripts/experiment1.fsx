// experiment_1: does forcing the residual stream onto a grid slow or stop learning?
// Trains the standard decoder and its quantized variants (straight-through and not) over several seeds, all
// as one batched model with the same data order per seed, then prints each variant's verdict, the steps each
// run learned and converged, final losses with 95% intervals, p-values and what the residual analysis shows.
// Usage: dotnet fsi scripts/experiment1.fsx [--full] [--levels 2,16] [--codebooks 256] [--seeds 5] [--first-seed 0] [--steps N]
#load "Prelude.fsx"

open Prelude
open System
open System.IO
open MechInterp.Analysis.Discretization.Experiment1

let baseSettings = if args |> Array.contains "--full" then fullSettings else quickSettings
let settings =
    let levels = intsOf "--levels"
    { baseSettings with
        StraightThroughLevels = defaultArg levels baseSettings.StraightThroughLevels
        CodebookSizes =
            intsOf "--codebooks" |> Option.defaultValue baseSettings.CodebookSizes
        Seeds = seedsOr baseSettings.Seeds
        Training =
            match intOf "--steps" with
            | Some n -> { baseSettings.Training with Steps = n; SnapshotEvery = max 1 (n / 4) }
            | None -> baseSettings.Training }

let result = run settings (printfn "%s")
let never (x: int option) = x |> Option.map string |> Option.defaultValue "never"
for v in result.Variants do
    let lo, hi = v.FinalLoss.Ci95
    let learned = v.Runs |> List.map (fun r -> never r.LearnedStep)
    let converged = v.Runs |> List.map (fun r -> never r.ConvergedStep)
    let p = v.VersusStandard |> Option.map (fun c -> sprintf "diff %+.3f, p = %.3f" c.Difference c.PValue) |> Option.defaultValue "baseline"
    printfn "%-12s %s" v.Variant.Name v.Verdict
    printfn "             final loss %.3f [%.3f, %.3f] (%s); learned at %s; converged at %s" v.FinalLoss.Mean lo hi p (String.Join(", ", learned)) (String.Join(", ", converged))
    for r in v.Runs do
        let l, h, s = r.Analysis.BestInduction
        let sl, sh, ss = r.Analysis.BestShiftedInduction
        printfn "    seed %d: best induction head L%dH%d %.2f, shifted L%dH%d %.2f, decomposition error %.1e" r.Seed l h s sl sh ss r.Analysis.DecompositionError
        for hook, used, perplexity in r.Analysis.CodebookUsage do printfn "      %s: %d entries used, perplexity %.1f" hook used perplexity

let answer = MechInterp.Analysis.Discretization.Section.answer result
printfn "\n%s\n  %s" answer.Question answer.Verdict
let json = MechInterp.Analysis.Report.Report.writeResults (Path.Combine("artifacts", "results")) "experiment1" answer (toJson result)
printfn "numbers in %s (%.0f s)" json result.Seconds
