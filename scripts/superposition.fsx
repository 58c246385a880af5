// Features as directions: the toy-models-of-superposition experiment, every setting overridable here.
// Run: dotnet fsi scripts/superposition.fsx   (build first: dotnet fsi build.fsx build)
// Writes artifacts/scripts/superposition/index.html (opens offline), a PNG per figure and the results JSON,
// prints the findings, and opens the figures in a browser when `show` is true and one is available.
#load "Prelude.fsx"

open System
open System.IO
open Plotly.NET                       // Chart.show; opened first so the report's own types win
open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Superposition
open MechInterp.Analysis.Superposition.Sweep

// ---- settings: start from a scale and override what you like -------------------------------------
let scale = Quick                                   // Quick | Full (the paper's 10,000 steps)
let show = false                                    // open each figure in a browser (needs one)
let outDir = Path.Combine(__SOURCE_DIRECTORY__, "..", "artifacts", "scripts", "superposition")

let baseConfig = Experiment.config scale
let training = { baseConfig.Plane.Training with LogEvery = 500 }   // AdamW, learning rate, batch, step cap per scale
let config : Experiment.SuperpositionConfig =
    { baseConfig with
        Main =
          [ for activation in [ ToyActivation.Relu; ToyActivation.Linear ] ->
                { Name = (if activation = ToyActivation.Relu then "relu-20-5" else "linear-20-5")
                  Features = 20; Hidden = 5; ImportanceDecay = 0.7; Activation = activation
                  Densities = Experiment.paperDensities; Replicates = 3; Seed = 0L; Training = training } ]
        Plane = { baseConfig.Plane with Features = 5; Hidden = 2; ImportanceDecay = 0.9; Training = training }
        Dimensionality = { baseConfig.Dimensionality with Features = 80; Hidden = 20 }
        Phase = { baseConfig.Phase with Importances = PhaseDiagram.logSpace 0.1 10.0 7; Densities = PhaseDiagram.logSpace 0.01 1.0 7 } }

// ---- run ---------------------------------------------------------------------------------------------
let clock = Diagnostics.Stopwatch.StartNew()
let results = Experiment.run (printfn "%s") config
printfn "trained in %.0f s" clock.Elapsed.TotalSeconds

for f in Section.findings results do
    printfn "%s %s: %s" (if f.Agrees then "agrees   " else "DISAGREES") f.Claim f.Evidence
for sw in results.Main do
    printfn "%-12s represented %s | D* %s" sw.Setting.Name
        (sw.Points |> List.map (fun p -> string p.Represented) |> String.concat " ")
        (sw.Points |> List.map (fun p -> sprintf "%.3f" p.DimsPerFeature) |> String.concat " ")

let section = Section.section results
let page = Report.write outDir "Superposition (script run)" [ section ]
Report.writeResults outDir "superposition" (Section.answer results) (Experiment.toJson results) |> ignore
printfn "report: %s" page

if show then
    for figure in section.Figures do
        PlotlyRender.figureChart figure |> Chart.show
