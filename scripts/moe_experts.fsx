// Do mixture-of-experts experts specialize on interpretable features? Reproduces the report's "moe"
// section and artifacts/results/moe.json: trains the toy MoE decoder and its baselines (untrained,
// hash router, dense with equal active parameters) on the toy language over 8 seeds (or --seeds), tests NMI and
// purity per ground-truth feature against label shuffles, runs the ablation / forcing / steering
// checks, and the MoE toy model of superposition.
//   dotnet fsi build.fsx build && dotnet fsi scripts/moe_experts.fsx [--full] [--seeds 8] [--first-seed 0]
#load "Prelude.fsx"

open Prelude
open System.IO
open MechInterp.Analysis.Report
open MechInterp.Analysis.Experts

let full = args |> Array.contains "--full"
let baseSetup, toy = if full then MoeStudy.fullSetup, MoeStudy.fullToy else MoeStudy.quickSetup, MoeStudy.quickToy
let setup = { baseSetup with Seeds = seedsOr baseSetup.Seeds }

// 1. Train the four models per seed and analyse them on a held-out batch.
let study = MoeStudy.run (printfn "%s") setup toy None

// 2. NMI of expert choice with each feature, trained vs baselines, with the largest p-value over seeds.
for layer in 0 .. setup.Layers - 1 do
    printfn "\nlayer %d            %s" layer (MoeStudy.kinds |> List.map (Subjects.kindName >> sprintf "%-22s") |> String.concat "")
    for KeyValue(feature, _) in study.Features do
        let cells =
            MoeStudy.kinds |> List.map (fun kind ->
                let models = study.Models |> List.filter (fun m -> m.Kind = kind && m.Layer = layer)
                let nmi = models |> List.averageBy (fun m -> m.Stats.Specialization.[feature].Nmi.Observed)
                let p = models |> List.map (fun m -> m.Stats.Specialization.[feature].Nmi.PValue) |> List.max
                sprintf "%-22s" (sprintf "%.3f (p<=%.3f)" nmi p))
        printfn "%-18s %s" feature (String.concat "" cells)

// 3. The verdicts the conclusion is written from.
for v in MoeSection.verdicts study do
    let seeds = match v.Causal with Some c -> sprintf "%d of %d seeds" c.Positive c.Pairs | None -> "not finite in some seed"
    printfn "layer %d %-16s significant %b, above in every seed %A, Holm p above hash %.3f, above hash and dense %.3f, ablation claimed > other in %s (Holm p %.3f): %A"
        v.Layer v.Feature v.Significant (v.AboveBaselines |> List.map Subjects.kindName) v.HashP v.BothP seeds v.CausalP (MoeSection.level v)

// 4. Artifacts: the results file and a one-section report.
let out = Path.Combine(__SOURCE_DIRECTORY__, "..", "artifacts", "moe-script")
let json = Report.writeResults (Path.Combine(out, "results")) "moe" (MoeSection.answer study) (MoeStudy.toJson study)
let page = Report.write (Path.Combine(out, "report")) "MoE experts" [ MoeSection.section study ]
printfn "\n%s\n%s" json page
