// The residual hypothesis: do a decoder's layers edit one shared stream, or re-encode into new spaces?
// Trains residual and plain decoders (same width and parameters; plain sublayers replace the stream) at several
// depths on the induction task and the toy language, every seed of an arm as one batched model, then prints
// each prediction's verdict (optimization, logit and tuned lens, deletion and swaps, CKA, edit size), saves
// seed 0 of each arm at the largest depth in artifacts/checkpoints/ and the numbers in
// artifacts/results/residual_hypothesis.json.
// Usage: dotnet fsi scripts/residual_hypothesis.fsx [--full] [--depths 2,4] [--seeds 5] [--first-seed 0] [--tasks induction,toy_language] [--steps N]
#load "Prelude.fsx"

open Prelude
open System
open System.IO
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Residual.Hypothesis

let baseSettings = HypothesisSection.settings (if args |> Array.contains "--full" then MechInterp.Analysis.Report.Full else MechInterp.Analysis.Report.Quick)
let steps = intOf "--steps"
let settings =
    { baseSettings with
        Depths = intsOf "--depths" |> Option.defaultValue baseSettings.Depths
        Seeds = seedsOr baseSettings.Seeds
        Tasks =
            listOf "--tasks"
            |> Option.map (List.map (function
                | "induction" -> Induction
                | "toy_language" -> Language
                | other -> failwith $"unknown task '{other}': induction or toy_language"))
            |> Option.defaultValue baseSettings.Tasks
        Induction = steps |> Option.map (fun n -> { baseSettings.Induction with Steps = n }) |> Option.defaultValue baseSettings.Induction
        Language = steps |> Option.map (fun n -> { baseSettings.Language with Steps = n }) |> Option.defaultValue baseSettings.Language }

let results = run settings (printfn "%s") (Some(Path.Combine("artifacts", "checkpoints")))
for v in HypothesisSection.verdicts results do
    printfn "%-3s %-13s depth %d: %s\n      residual %s\n      plain    %s\n      difference %s" v.Prediction (taskName v.Cell.Task) v.Cell.Depth v.Verdict v.ResidualText v.PlainText v.DifferenceText
let answer = HypothesisSection.answer settings results
printfn "\n%s\n  %s" answer.Question answer.Verdict
let json = MechInterp.Analysis.Report.Report.writeResults (Path.Combine("artifacts", "results")) "residual_hypothesis" answer (HypothesisSection.toJson settings results)
printfn "numbers in %s" json
