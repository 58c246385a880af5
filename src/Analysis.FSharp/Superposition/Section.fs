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
    // Only represented features: a near-zero W_i still has a direction, and its superposition
    // (Ŵ_i · W_j)² can be 1 while it stores nothing.
    let maxSup =
        Array.zip dense.FeatureNorms dense.Superposition
        |> Array.filter (fun (norm, _) -> norm > Metrics.representedThreshold)
        |> Array.map snd
        |> Array.fold max 0.0
    { Claim = "ReLU model, dense: no superposition (at most m features, each on its own dimension)"
      Agrees = dense.Represented <= sw.Setting.Hidden && maxSup < 0.1
      Evidence = sprintf "at 1 − S = %g: %d represented, largest superposition among them %.3f" dense.Density dense.Represented maxSup }

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

/// n = 5, m = 2 at the sparsest density: all five features represented as a pentagon, each feature's dimensionality
/// D_i ≈ 2/5 (the paper's D* = m / ‖W‖_F² is 2/5 for unit-norm features; D_i is 2/5 for a regular pentagon at any
/// norm, and the trained norms exceed 1), with neighbouring directions 72° apart.
let planePentagon (sw: SweepResult) =
    let sparse = sw.Points |> List.minBy (fun p -> p.Density)
    let angles =
        [ for i in 0 .. sparse.FeatureNorms.Length - 1 do
              if sparse.FeatureNorms.[i] > Metrics.representedThreshold then yield atan2 sparse.W.[1, i] sparse.W.[0, i] ]
        |> List.sort
    let gaps =
        match angles with
        | [] -> []
        | first :: _ -> (angles @ [ first + 2.0 * System.Math.PI ]) |> List.pairwise |> List.map (fun (a, b) -> (b - a) * 180.0 / System.Math.PI)
    let n = sparse.FeatureNorms.Length
    let meanD = Array.average sparse.FeatureDimensionality
    let regular = gaps.Length = n && gaps |> List.forall (fun g -> abs (g - 360.0 / float n) <= 10.0)
    { Claim = $"n = {n}, m = {sw.Setting.Hidden}: at high sparsity the features form a pentagon (D_i ≈ 2/5)"
      Agrees = sparse.Represented = n && abs (meanD - 2.0 / 5.0) <= 0.05 && regular
      Evidence =
        sprintf "at 1 − S = %g: %d of %d represented, mean D_i = %.3f, D* = m / ‖W‖_F² = %.3f (mean ‖W_i‖ %.2f); angles between neighbouring directions %s°"
            sparse.Density sparse.Represented n meanD sparse.DimsPerFeature (Array.average sparse.FeatureNorms)
            (gaps |> List.map (sprintf "%.0f") |> String.concat ", ") }

/// The sticky fractions' values, and the band that counts as at one in the share the issue reports.
let stickyFractions = Metrics.stickyFractions |> List.map fst
let stickyBand = 0.05

/// The share of [0, 1] within `band` of some sticky fraction.
let private coverage (band: float) =
    let steps = 100_000
    [ for k in 0 .. steps - 1 -> (float k + 0.5) / float steps ]
    |> List.filter (fun d -> stickyFractions |> List.exists (fun f -> abs (d - f) <= band))
    |> List.length |> fun c -> float c / float steps

/// What a D_i spread evenly on [0, 1] would score on the share the issue reports.
let stickyChance = coverage stickyBand

/// The tight band of the clustering test.
let stickyTightBand = 0.01

/// The connected stretches of [0, 1] within stickyBand of some fraction (1/3, 3/8 and 2/5 merge into one), each with
/// the share of it within stickyTightBand of a fraction: the chance that a D_i spread evenly over the stretch sticks.
let stickyStretches =
    let steps = 20_000
    let grid = [| for k in 0 .. steps -> float k / float steps |]
    let wide d = stickyFractions |> List.exists (fun f -> abs (d - f) <= stickyBand)
    let tight d = stickyFractions |> List.exists (fun f -> abs (d - f) <= stickyTightBand)
    [ let mutable start = -1
      for k in 0 .. steps do
          let inside = wide grid.[k]
          if inside && start < 0 then start <- k
          if start >= 0 && (not inside || k = steps) then
              let stop = if inside then k else k - 1
              let points = grid.[start .. stop]
              yield grid.[start], grid.[stop], float (points |> Array.filter tight |> Array.length) / float points.Length
              start <- -1 ]

/// D_i of the represented features at densities where features share dimensions (D* < 1).
let private superposedDims (sw: SweepResult) =
    [ for p in sw.Points do
          if p.DimsPerFeature < 1.0 then
              for i in 0 .. p.FeatureNorms.Length - 1 do
                  if p.FeatureNorms.[i] > Metrics.representedThreshold then yield p.FeatureDimensionality.[i] ]

let private within (band: float) (d: float) = stickyFractions |> List.exists (fun f -> abs (d - f) <= band)

/// Represented features in superposition (D* < 1 densities) whose D_i lies within stickyBand of a sticky fraction, and how many were counted.
let stickyShare (sw: SweepResult) =
    let dims = superposedDims sw
    dims |> List.filter (within stickyBand) |> List.length, dims.Length

/// P(at least k successes) for independent trials with success probabilities ps (Poisson-binomial, exact).
let private atLeast (k: int) (ps: float list) =
    let dist = Array.zeroCreate (ps.Length + 1)
    dist.[0] <- 1.0
    ps |> List.iteri (fun i p ->
        for j in i + 1 .. -1 .. 1 do dist.[j] <- dist.[j] * (1.0 - p) + dist.[j - 1] * p
        dist.[0] <- dist.[0] * (1.0 - p))
    Array.sum dist.[k ..]

/// n = 80, m = 20: feature dimensionalities cluster at the sticky fractions themselves. Of the D_i within 0.05 of a
/// fraction (the share the issue reports), those that stick sit within 0.01 of it more often than D_i spread evenly
/// over their stretch of the bands would (exact one-sided test, each D_i with its stretch's chance): a spread that
/// merely covers the range the fractions span does not pass.
let dimensionalitySticky (sw: SweepResult) =
    let near, total = stickyShare sw
    let inBands = superposedDims sw |> List.filter (within stickyBand)
    let chance d = stickyStretches |> List.tryFind (fun (a, b, _) -> d >= a && d <= b) |> Option.map (fun (_, _, c) -> c) |> Option.defaultValue 0.0
    let tight = inBands |> List.filter (within stickyTightBand) |> List.length
    let expected = inBands |> List.sumBy chance
    let p = if inBands.IsEmpty then 1.0 else atLeast tight (inBands |> List.map chance)
    { Claim = $"n = {sw.Setting.Features}, m = {sw.Setting.Hidden}: feature dimensionalities cluster at the sticky fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8, 1/3"
      Agrees = total > 0 && p < 0.05
      Evidence =
        sprintf "%d of %d represented features in superposition (%.0f%%) have D_i within %.2f of a sticky fraction (%.0f%% of [0, 1] lies that close); of these, %d lie within %.2f of one, against %.1f expected for D_i spread evenly over the bands (one-sided p = %.2g)"
            near total (100.0 * float near / float (max 1 total)) stickyBand (100.0 * stickyChance) tight stickyTightBand expected p }

/// Every check of the paper's findings, in report order.
let findings (r: SuperpositionResults) =
    [ for sw in r.Main do
          match sw.Setting.Activation with
          | ToyActivation.Linear -> yield linearTopM sw
          | _ ->
              yield reluDenseNoSuperposition sw
              yield reluGrowsWithSparsity sw
              yield reluAntipodalFirst sw
      yield planePentagon r.Plane
      yield dimensionalitySticky r.Dimensionality ]

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

let private convergedText (sw: SweepResult) =
    let kept = sw.Points |> List.filter (fun p -> p.Convergence.Converged) |> List.length
    let all = sw.Points |> List.sumBy (fun p -> p.ConvergedReplicates)
    $"{kept}/{sw.Points.Length} kept runs converged ({all}/{sw.Points.Length * sw.Setting.Replicates} of all replicates)"

let private settingsText (r: SuperpositionResults) =
    let t = (List.head r.Main).Setting.Training
    let sweeps =
        r.Main @ [ r.Plane; r.Dimensionality ]
        |> List.map (fun sw -> $"{sw.Setting.Name}: {sw.Setting.Densities.Length} densities × {sw.Setting.Replicates} replicates, {sw.StepsRun} of at most {sw.Setting.Training.Steps} steps, {convergedText sw}, {sw.Seconds:F0} s")
        |> String.concat "; "
    let pd = r.Phase.Settings
    let cells = r.Phase.Cells |> Seq.cast<PhaseDiagram.PhaseCell> |> List.ofSeq
    $"Training: AdamW, learning rate {t.LearningRate}, weight decay {t.WeightDecay}, batch {t.BatchSize}, loss Σ_i I_i (x_i − x'_i)² averaged over the batch; "
    + $"one batched model per setting with an instance per density and replicate; each density keeps its lowest-loss replicate. "
    + $"A run has learned when its loss is at most 90%% of that of the best model that represents no feature (W = 0, b = E[x]), and converged when, after that, {(criterion t).Describe()}. "
    + $"{sweeps}. Phase diagram: {pd.Importances.Length} × {pd.Densities.Length} cells × {pd.Replicates} replicates, "
    + $"{r.Phase.StepsRun} of at most {pd.Training.Steps} steps, {cells |> List.filter (fun c -> c.Converged) |> List.length}/{cells.Length} kept runs converged, {r.Phase.Seconds:F0} s."

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

/// The experiment's answer, from the checks and the sparsest ReLU n = 20 instance.
let answer (r: SuperpositionResults) : Answer =
    let fs = findings r
    let agree = fs |> List.filter (fun f -> f.Agrees)
    let relu = r.Main |> List.find (fun sw -> sw.Setting.Activation = ToyActivation.Relu)
    let sparse = relu.Points |> List.minBy (fun p -> p.Density)
    let reps = sparse.ReplicateRepresented |> Array.map float
    let s = MechInterp.Analysis.Statistics.Intervals.summarize reps
    let lo, hi = s.Ci95
    let sweeps = r.Main @ [ r.Plane; r.Dimensionality ]
    let runs = (sweeps |> List.sumBy (fun sw -> sw.Points.Length * sw.Setting.Replicates)) + r.Phase.Cells.Length * r.Phase.Settings.Replicates
    let converged = (sweeps |> List.sumBy (fun sw -> sw.Points |> List.sumBy (fun p -> p.ConvergedReplicates))) + r.Phase.ConvergedRuns
    { Question = "Do models pack more features than dimensions (superposition), as Toy Models of Superposition finds?"
      Verdict =
        if agree.Length = fs.Length then $"Yes: all {fs.Length} checks against the paper's findings agree"
        else
            $"{agree.Length} of {fs.Length} checks against the paper agree; disagreeing: "
            + (fs |> List.filter (fun f -> not f.Agrees) |> List.map (fun f -> f.Claim) |> String.concat "; ")
      Evidence = fs |> List.map (fun f -> sprintf "%s %s (%s)" (if f.Agrees then "agrees:" else "DISAGREES:") f.Claim f.Evidence) |> String.concat " | "
      KeyNumber =
        sprintf "ReLU, n = %d into m = %d, 1 − S = %g: %d features represented by the kept replicate; over its %d replicates %.1f [%.1f, %.1f]"
            relu.Setting.Features relu.Setting.Hidden sparse.Density sparse.Represented reps.Length s.Mean lo hi
      Seeds = relu.Setting.Replicates
      Runs = runs
      Converged = converged }

/// The id of the phase diagram's unit; each sweep's unit is named by its setting.
let phaseUnit = "phase-diagram"

/// The experiment over the settings `configOf` gives per scale: one unit per sweep setting and one for the phase
/// diagram, each a batched model of its own (as the single-process run trains them).
let experimentWith (configOf: Scale -> SuperpositionConfig) : Experiment =
    let log = printfn "%s"
    { Name = "superposition"
      Description = "Toy models of superposition: n = 20/m = 5 sweeps, n = 5/m = 2 geometry, n = 80/m = 20 dimensionality, n = 2/m = 1 phase diagram"
      Units =
        fun scale ->
            let c = configOf scale
            validateAll c
            [ for s in c.Main @ [ c.Plane; c.Dimensionality ] do
                  yield WorkUnit.create s.Name s.Name [ int s.Seed ] (fun () -> sweep log s)
              yield WorkUnit.create phaseUnit phaseUnit [ int c.Phase.Seed ] (fun () -> phaseDiagram log c.Phase) ]
      Combine =
        fun scale partials ->
            let c = configOf scale
            let sweepOf (s: SweepSetting) = Partial.ofNode<SweepResult> partials.[s.Name]
            let results =
                { Config = c
                  Main = c.Main |> List.map sweepOf
                  Plane = sweepOf c.Plane
                  Dimensionality = sweepOf c.Dimensionality
                  Phase = Partial.ofNode<PhaseDiagram.PhaseDiagramResult> partials.[phaseUnit] }
            { Answer = answer results; Sections = [ section results ]; Results = toJson results } }

/// The main job's entry: trains at the given scale, returns the section and the results file's contents.
let experiment : Experiment = experimentWith config
