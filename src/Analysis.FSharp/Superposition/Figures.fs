/// The superposition experiment's figures, as report values (the renderers draw them).
module MechInterp.Analysis.Superposition.Figures

open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Superposition.Sweep
open MechInterp.Analysis.Superposition.PhaseDiagram

let private palette =
    [| "#1f77b4"; "#ff7f0e"; "#2ca02c"; "#d62728"; "#9467bd"; "#8c564b"; "#e377c2"; "#7f7f7f"; "#bcbd22"; "#17becf" |]

/// Superposition 0 → black, ≥ 1 → yellow, as in the paper's bar charts.
let superpositionColor (s: float) =
    let t = max 0.0 (min 1.0 s)
    let channel (hi: int) = int (round (t * float hi))
    sprintf "#%02x%02x%02x" (channel 0xf2) (channel 0xc4) (channel 0x0c)

let activationName = function ToyActivation.Relu -> "ReLU" | _ -> "linear"

let private densityTitle (d: float) = sprintf "1 − S = %g" d

/// The paper's first figure for one setting: WᵀW (top row) and ‖W_i‖ bars coloured by superposition (bottom row).
let weights (sweep: SweepResult) : Figure =
    let s = sweep.Setting
    let heatmaps =
        sweep.Points
        |> List.map (fun p ->
            { Panel.empty (densityTitle p.Density) with
                XLabel = "feature j"; YLabel = "feature i"
                Series = [ Heatmap(Metrics.gram p.W, -1.0, 1.0) ] })
    let bars =
        sweep.Points
        |> List.map (fun p ->
            { Panel.empty (sprintf "%s: %d represented" (densityTitle p.Density) p.Represented) with
                XLabel = "feature i"; YLabel = "‖W_i‖"
                Series =
                  [ Bars("‖W_i‖", Array.init p.FeatureNorms.Length float, p.FeatureNorms,
                         p.Superposition |> Array.map superpositionColor) ] })
    Figure.create (s.Name + "-weights")
        (sprintf "%s model, n = %d, m = %d, I_i = %g^i: WᵀW and feature norms per density" (activationName s.Activation) s.Features s.Hidden s.ImportanceDecay)
        "Top: WᵀW (blue negative, red positive, range ±1). Bottom: ‖W_i‖ per feature in importance order, coloured by Σ_{j≠i}(Ŵ_i·W_j)² (black none, yellow ≥ 1)."
        sweep.Points.Length (heatmaps @ bars)

/// Features represented and D* against density, for several settings on shared axes.
let representation (sweeps: SweepResult list) : Figure =
    let line f (sw: SweepResult) =
        let xs = sw.Points |> List.map (fun p -> p.Density) |> Array.ofList
        let ys = sw.Points |> List.map f |> Array.ofList
        xs, ys
    let series f =
        sweeps |> List.mapi (fun i sw ->
            let xs, ys = line f sw
            Line(activationName sw.Setting.Activation, xs, ys, palette.[i % palette.Length], true))
    let hidden = sweeps |> List.tryHead |> Option.map (fun sw -> float sw.Setting.Hidden) |> Option.defaultValue 0.0
    Figure.create "representation" "Features represented (‖W_i‖ > 0.5) and dimensions per feature D*"
        "Left: how many of the n features get a direction longer than 0.5; the dashed line is m. Right: D* = m / ‖W‖_F²."
        2
        [ { Panel.empty "features represented" with
              XLabel = "density 1 − S"; YLabel = "count"; XLog = true; ShowLegend = true
              Series = series (fun p -> float p.Represented) @ [ HLine(hidden, "m") ] }
          { Panel.empty "dimensions per feature D*" with
              XLabel = "density 1 − S"; YLabel = "D*"; XLog = true; ShowLegend = true
              Series = series (fun p -> p.DimsPerFeature) } ]

/// Feature directions W_i in the plane, one panel per density (m = 2 only).
let directions (sweep: SweepResult) : Figure =
    let s = sweep.Setting
    if s.Hidden <> 2 then invalidArg (nameof sweep) $"feature directions in the plane need m = 2, got m = {s.Hidden}"
    let panels =
        sweep.Points
        |> List.mapi (fun k p ->
            { Panel.empty (densityTitle p.Density) with
                EqualAspect = true; ShowLegend = (k = 0)
                Series =
                  [ for i in 0 .. s.Features - 1 ->
                        Line(sprintf "feature %d" i, [| 0.0; p.W.[0, i] |], [| 0.0; p.W.[1, i] |], palette.[i % palette.Length], true) ] })
    Figure.create (s.Name + "-directions")
        (sprintf "n = %d, m = %d, I_i = %g^i: feature directions W_i in the hidden plane" s.Features s.Hidden s.ImportanceDecay)
        "Each segment runs from the origin to W_i. Dense: the two most important features take orthogonal directions; sparser: antipodal pairs, then a pentagon."
        (min 4 sweep.Points.Length) panels

/// Feature dimensionality D_i of represented features and D*, against 1/(1 − S).
let dimensionality (sweep: SweepResult) : Figure =
    let s = sweep.Setting
    let points = sweep.Points |> List.filter (fun p -> p.Density > 0.0)
    let scatterX, scatterY =
        [ for p in points do
              for i in 0 .. p.FeatureNorms.Length - 1 do
                  if p.FeatureNorms.[i] > Metrics.representedThreshold then yield 1.0 / p.Density, p.FeatureDimensionality.[i] ]
        |> List.unzip
    let dStar = Line("D* = m / ‖W‖_F²", points |> List.map (fun p -> 1.0 / p.Density) |> Array.ofList,
                     points |> List.map (fun p -> p.DimsPerFeature) |> Array.ofList, "#000000", false)
    Figure.create (s.Name + "-dimensionality")
        (sprintf "n = %d, m = %d: feature dimensionality D_i against sparsity" s.Features s.Hidden)
        "Dots: D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² of each represented feature (‖W_i‖ > 0.5); line: D*. Dashed: the sticky fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8, 1/3."
        1
        [ { Panel.empty "feature dimensionality" with
              XLabel = "1 / (1 − S)"; YLabel = "dimensions per feature"; XLog = true; ShowLegend = true
              Series =
                [ Points("D_i", Array.ofList scatterX, Array.ofList scatterY, "#1f77b4", None); dStar ]
                @ [ for y, name in Metrics.stickyFractions -> HLine(y, name) ] } ]
    |> fun f -> { f with PanelWidth = 900; PanelHeight = 520 }

let private phaseColor = function NotRepresented -> "#bbbbbb" | DedicatedDimension -> "#1f77b4" | Superposition -> "#d62728"

/// The n = 2, m = 1 phase diagram: a marker per cell, coloured by what happens to feature 2.
let phase (pd: PhaseDiagramResult) : Figure =
    let cells = pd.Cells |> Seq.cast<PhaseCell> |> List.ofSeq
    let series =
        [ for phase in [ NotRepresented; DedicatedDimension; Superposition ] do
              let inPhase = cells |> List.filter (fun c -> c.Phase = phase)
              if not inPhase.IsEmpty then
                  Points(label phase, inPhase |> List.map (fun c -> c.Density) |> Array.ofList,
                         inPhase |> List.map (fun c -> c.Importance) |> Array.ofList, phaseColor phase, None) ]
    Figure.create "phase-diagram" "n = 2, m = 1 phase diagram: what the model does with feature 2"
        "Feature 1 has importance 1, feature 2 the relative importance on the y axis; both share the density on the x axis. Each cell keeps the lowest-loss of its replicates."
        1
        [ { Panel.empty "phase of feature 2" with
              XLabel = "feature density 1 − S"; YLabel = "relative importance of feature 2"
              XLog = true; YLog = true; ShowLegend = true; Series = series } ]
    |> fun f -> { f with PanelWidth = 700; PanelHeight = 560 }
