/// The superposition experiment's report section: checks against the paper's qualitative findings,
/// tables, figures, and the entry the main job registers.
module MechInterp.Analysis.Superposition.Section

open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Superposition.Sweep
open MechInterp.Analysis.Superposition.Experiment

/// A qualitative claim of the paper, whether this run agrees, and the numbers that decide it.
type Finding = { Claim: string; Agrees: bool; Evidence: string }

let private counts (sw: SweepResult) =
    sw.Points |> List.map (fun p -> sprintf "%d" p.Represented) |> String.concat ", "

/// Linear: exactly the m most important features, at every density.
let linearTopM (sw: SweepResult) =
    let m = sw.Setting.Hidden
    let topM (p: SweepPoint) =
        p.Represented = m && p.FeatureNorms |> Array.take m |> Array.forall (fun x -> x > Metrics.representedThreshold)
    { Claim = $"linear model: represents the m = {m} most important features, at every density"
      Agrees = sw.Points |> List.forall topM
      Evidence = $"features represented per density: {counts sw}" }

/// ReLU, dense: at most m features and no superposition among them.
let reluDenseNoSuperposition (sw: SweepResult) =
    let dense = sw.Points |> List.maxBy (fun p -> p.Density)
    let maxSup = Array.max dense.Superposition
    { Claim = "ReLU model, dense: no superposition (at most m features, each on its own dimension)"
      Agrees = dense.Represented <= sw.Setting.Hidden && maxSup < 0.1
      Evidence = sprintf "at 1 − S = %g: %d represented, largest superposition %.3f" dense.Density dense.Represented maxSup }

/// ReLU: features represented grow as features get sparser, past m.
let reluGrowsWithSparsity (sw: SweepResult) =
    let byDensity = sw.Points |> List.sortByDescending (fun p -> p.Density) |> List.map (fun p -> p.Represented)
    let monotone = byDensity |> List.pairwise |> List.forall (fun (a, b) -> b >= a)
    { Claim = "ReLU model: superposition grows with sparsity (features represented rise past m as 1 − S falls)"
      Agrees = monotone && List.last byDensity > sw.Setting.Hidden
      Evidence = sprintf "features represented from dense to sparse: %s%s" (counts sw) (if monotone then "" else " (not monotone)") }

/// ReLU: at the first density with more than m features, those in superposition sit in antipodal pairs.
let reluAntipodalFirst (sw: SweepResult) =
    let first = sw.Points |> List.sortByDescending (fun p -> p.Density) |> List.tryFind (fun p -> p.Represented > sw.Setting.Hidden)
    match first with
    | None ->
        { Claim = "ReLU model: antipodal pairs first"; Agrees = false
          Evidence = "no density had more than m features represented" }
    | Some p ->
        let g = Metrics.gram p.W
        let shared =
            [ for i in 0 .. p.FeatureNorms.Length - 1 do
                  if p.FeatureNorms.[i] > Metrics.representedThreshold && p.Superposition.[i] > 0.25 then yield i ]
        let antipodal i =
            let partner, cosine =
                [ for j in 0 .. p.FeatureNorms.Length - 1 do
                      if j <> i && p.FeatureNorms.[j] > Metrics.representedThreshold then
                          yield j, g.[i, j] / (p.FeatureNorms.[i] * p.FeatureNorms.[j]) ]
                |> List.minBy snd
            cosine < -0.9 && abs (p.FeatureDimensionality.[i] - 0.5) < 0.1, partner
        let pairs = shared |> List.map (fun i -> i, antipodal i)
        let good = pairs |> List.filter (fun (_, (ok, _)) -> ok)
        { Claim = "ReLU model: the first features beyond m enter superposition as antipodal pairs (D_i ≈ 1/2)"
          Agrees = not shared.IsEmpty && good.Length = shared.Length
          Evidence =
            sprintf "at 1 − S = %g, %d features share dimensions; %d of them have an antipodal partner (cos < −0.9) and D_i within 0.1 of 1/2: %s"
                p.Density shared.Length good.Length
                (pairs |> List.map (fun (i, (ok, j)) -> sprintf "%d↔%d%s" i j (if ok then "" else " (not antipodal)")) |> String.concat ", ") }

/// All checks for the n = 20, m = 5 sweeps.
let findings (r: SuperpositionResults) =
    [ for sw in r.Main do
          match sw.Setting.Activation with
          | ToyActivation.Linear -> yield linearTopM sw
          | _ ->
              yield reluDenseNoSuperposition sw
              yield reluGrowsWithSparsity sw
              yield reluAntipodalFirst sw ]

let private fmt (x: float) = if System.Double.IsFinite x then sprintf "%.3f" x else "∞"

let private summaryTable (r: SuperpositionResults) =
    let cols = r.Main
    { Title = "n = 20, m = 5, I_i = 0.7^i: per density"
      Header =
        [ "1 − S" ] @ [ for sw in cols -> $"{Figures.activationName sw.Setting.Activation} represented" ]
        @ [ for sw in cols -> $"{Figures.activationName sw.Setting.Activation} D*" ]
        @ [ for sw in cols -> $"{Figures.activationName sw.Setting.Activation} loss" ]
      Rows =
        [ for k in 0 .. cols.Head.Points.Length - 1 ->
              [ sprintf "%g" cols.Head.Points.[k].Density ]
              @ [ for sw in cols -> string sw.Points.[k].Represented ]
              @ [ for sw in cols -> fmt sw.Points.[k].DimsPerFeature ]
              @ [ for sw in cols -> sprintf "%.4g" sw.Points.[k].Loss ] ] }

let private phaseCounts (r: SuperpositionResults) =
    r.Phase.Cells |> Seq.cast<PhaseDiagram.PhaseCell> |> Seq.countBy (fun c -> PhaseDiagram.label c.Phase)
    |> Seq.map (fun (l, n) -> $"{n} {l}") |> String.concat ", "

let private settingsText (r: SuperpositionResults) =
    let t = (List.head r.Main).Setting.Training
    let sweeps =
        r.Main @ [ r.Plane; r.Dimensionality ]
        |> List.map (fun sw -> $"{sw.Setting.Name}: {sw.Setting.Training.Steps} steps, seed {sw.Setting.Seed}, {sw.Seconds:F0} s")
        |> String.concat "; "
    let pd = r.Phase.Settings
    let seeds = pd.Seeds |> List.map string |> String.concat ", "
    $"Training: AdamW, learning rate {t.LearningRate}, weight decay {t.WeightDecay}, batch {t.BatchSize}, loss Σ_i I_i (x_i − x'_i)² averaged over the batch; "
    + $"one batched model per setting with an instance per density. {sweeps}. Phase diagram: {pd.Importances.Length} × {pd.Densities.Length} cells, "
    + $"{pd.Training.Steps} steps, seeds {seeds} (lowest loss kept), {r.Phase.Seconds:F0} s."

/// The report section.
let section (r: SuperpositionResults) : ReportSection =
    let fs = findings r
    let relu = r.Main |> List.tryFind (fun sw -> sw.Setting.Activation = ToyActivation.Relu)
    let linear = r.Main |> List.tryFind (fun sw -> sw.Setting.Activation = ToyActivation.Linear)
    let keyNumbers =
        [ for sw in r.Main do
              let name = Figures.activationName sw.Setting.Activation
              let densities = sw.Setting.Densities |> List.map (sprintf "%g") |> String.concat ", "
              yield { Label = $"{name}: features represented per density 1 − S = {densities}"; Value = counts sw }
              yield { Label = $"{name}: D* per density"; Value = sw.Points |> List.map (fun p -> fmt p.DimsPerFeature) |> String.concat ", " }
          yield { Label = "phase diagram cells (feature 2)"; Value = phaseCounts r }
          for f in fs -> { Label = f.Claim; Value = (if f.Agrees then "agrees with the paper" else "DISAGREES with the paper") } ]
    { ReportSection.create "superposition" "Features as directions: toy models of superposition" with
        Paragraphs =
          [ "Reproduction of Elhage et al. (2022), Toy Models of Superposition. A model compresses n sparse features into m < n dimensions "
            + "with x' = ReLU(WᵀWx + b) (or without the ReLU, the linear baseline); feature i is 0 with probability S, else uniform on [0, 1], "
            + "and its reconstruction error is weighted by its importance I_i. Column W_i of W is the direction the model gives feature i."
            settingsText r
            (if r.Main |> List.exists (fun sw -> sw.Setting.Training.Steps < paperTraining.Steps) then
                 $"These runs train fewer steps than the paper's {paperTraining.Steps}; a feature starts with ‖W_i‖ ≈ 0.6 "
                 + "(Xavier initialisation), so an undertrained run can count features as represented that have not yet decayed. "
                 + "Where a check below disagrees, compare a full-scale run (dotnet fsi build.fsx --full) before reading it as a disagreement with the paper."
             else "These runs use the paper's full training length.")
            "Checks against the paper's qualitative findings (computed from this run, not tuned):" ]
          @ [ for f in fs -> sprintf "%s %s — %s." (if f.Agrees then "✓" else "✗") f.Claim f.Evidence ]
        KeyNumbers = keyNumbers
        Figures =
          [ yield! relu |> Option.map Figures.weights |> Option.toList
            yield! linear |> Option.map Figures.weights |> Option.toList
            yield Figures.representation r.Main
            yield Figures.directions r.Plane
            yield Figures.dimensionality r.Dimensionality
            yield Figures.phase r.Phase ]
        Tables = [ summaryTable r ] }

/// The main job's entry: trains at the given scale, returns the section and the results file's contents.
let experiment : Experiment =
    { Name = "superposition"
      Description = "Toy models of superposition: n = 20/m = 5 sweeps, n = 5/m = 2 geometry, n = 80/m = 20 dimensionality, n = 2/m = 1 phase diagram"
      Run =
        fun scale ->
            let results = run (printfn "%s") (config scale)
            { Sections = [ section results ]; Results = toJson results } }
