/// The induction study as an experiment of the main job: its settings per scale, its results file
/// (residual.json) and its report section.
module MechInterp.Analysis.Residual.Section

open System
open MechInterp.Analysis.Report
open MechInterp.Analysis.Residual.HeadScores
open MechInterp.Analysis.Residual.InductionRun
open MechInterp.Analysis.Residual.InductionStudy
open MechInterp.Analysis.Patching.ActivationPatching

let private palette = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#9467bd"; "#ff7f0e"; "#8c564b"; "#e377c2"; "#17becf" |]
let private color i = palette.[i % palette.Length]

/// Where the study keeps its trained model (relative to the working directory, as the main job's artifacts).
let checkpointPath = IO.Path.Combine("artifacts", "checkpoints", "induction.safetensors")

let private whenFormed = function
    | Some (s: int) -> $"reaching {headFormedLevel} at step {s}"
    | None -> $"never reaching {headFormedLevel}"

/// A heatmap panel of a [row, column] matrix over [zMin, zMax].
let heatmapPanel title xLabel yLabel (m: float[,]) zMin zMax =
    let m = m |> Array2D.map (fun v -> if Double.IsFinite v then v else 0.0)
    { Panel.empty title with XLabel = xLabel; YLabel = yLabel; Series = [ Heatmap(m, zMin, zMax) ] }

let private lossFigure (r: InductionStudyResult) =
    let smooth = smoothed 20 r.Run.Losses
    let steps = Array.init smooth.Length (fun i -> float (i + 1))
    let snaps = r.Run.Snapshots
    let sx = snaps |> List.map (fun s -> float s.Step) |> Array.ofList
    let maxScore (f: Snapshot -> HeadScoreTable) layer =
        snaps |> List.map (fun s -> let t = f s in Seq.max [ for h in 0 .. Array2D.length2 t.Values - 1 -> t.Values.[layer, h] ]) |> Array.ofList
    let layers = r.Run.Settings.Layers
    Figure.create "training" "Loss and head scores through training"
        $"Left: training loss (20-step trailing mean, all positions) and the held-out loss on the repeat, which only induction can lower; it falls fastest in the interval ending at step {r.SteepestDropStep}. Right: the highest previous-token and induction score among each layer's heads at every snapshot; a head counts as formed at {headFormedLevel}."
        2
        [ { Panel.empty "Loss" with
              XLabel = "step"; YLabel = "loss (nats)"; ShowLegend = true
              Series =
                [ Line("training loss", steps, smooth, color 0, false)
                  Line("repeat loss (held out)", sx, snaps |> List.map (fun s -> s.RepeatLoss) |> Array.ofList, color 1, true) ] }
          { Panel.empty "Head scores" with
              XLabel = "step"; YLabel = "score"; ShowLegend = true
              Series =
                [ for l in 0 .. layers - 1 do
                      yield Line($"L{l} previous-token (max)", sx, maxScore (fun s -> s.PreviousToken) l, color (2 * l), true)
                      yield Line($"L{l} induction (max)", sx, maxScore (fun s -> s.Induction) l, color (2 * l + 1), true)
                  yield HLine(headFormedLevel, "formed") ] } ]

let private headFigure (e: EndAnalysis) =
    Figure.create "heads" "Per-head scores at the end"
        "Rows are layers (L0 at the top), columns heads. Previous-token score: mean attention from each position to the one before; induction score: mean attention from each repeated token to the token after its first occurrence."
        2
        [ heatmapPanel "Previous-token score" "head" "layer" e.PreviousToken.Values -1.0 1.0
          heatmapPanel "Induction score" "head" "layer" e.Induction.Values -1.0 1.0 ]

let private lensFigure (e: EndAnalysis) =
    let bars (xs: (string * float)[]) = [| for i in 0 .. xs.Length - 1 -> float i |], xs |> Array.map snd
    let lx, ly = bars e.LogitLens
    let hx, hy = bars e.AttributionByHead
    Figure.create "lens" "Logit lens and direct logit attribution"
        ("Left: loss on the repeat when the residual stream is read out after each layer (bars in order "
         + String.Join(", ", e.LogitLens |> Array.map fst) + "). Right: each component's direct contribution to logit(correct) − mean logit on the repeat, final norm frozen (bars in order "
         + String.Join(", ", e.AttributionByHead |> Array.map fst) + ").")
        2
        [ { Panel.empty "Logit lens: repeat loss" with
              XLabel = "stream after"; YLabel = "loss (nats)"
              Series = [ Bars("loss", lx, ly, Array.init lx.Length color) ] }
          { Panel.empty "Direct logit attribution" with
              XLabel = "component"; YLabel = "logit difference"
              Series = [ Bars("attribution", hx, hy, Array.init hx.Length (fun i -> color (i / 3))) ] } ]

let private patchingFigure (patches: PatchingResult list) =
    Figure.create "patching" "Activation patching (clean → corrupted)"
        "Clean: BOS, A, A; corrupted: BOS, B, A. Colour: share of the clean logit(correct) − mean logit on the repeat restored by patching one place (1 = all; red positive, blue negative, each map on the symmetric scale in its title). Layer × position maps have layers as rows, positions 0..2h as columns; the head map has layers as rows, heads as columns."
        patches.Length
        [ for p in patches ->
              // Each map on its own symmetric scale: one position's share is small next to a whole head's.
              let top = p.Recovered |> Seq.cast<float> |> Seq.filter Double.IsFinite |> Seq.map abs |> Seq.fold max 1e-6
              heatmapPanel $"{p.Component} (±{top:F2})" (if p.Component.StartsWith "head" then "head" else "position") "layer" p.Recovered -top top ]

/// Which heads carry the circuit, in words: the best previous-token and induction heads and patching's top head.
let private describe (r: InductionStudyResult) =
    let e = r.End
    let pl, ph, pv = best e.PreviousToken
    let il, ih, iv = best e.Induction
    let sl, sh, sv = best e.ShiftedInduction
    let bl, bh, bv = best e.LookBack
    let heads = e.Patching |> List.find (fun p -> p.Component.StartsWith "head")
    let topHead =
        seq { for l in 0 .. Array2D.length1 heads.Recovered - 1 do
                for h in 0 .. Array2D.length2 heads.Recovered - 1 -> l, h, heads.Recovered.[l, h] }
        |> Seq.maxBy (fun (_, _, v) -> if Double.IsFinite v then v else -infinity)
    let tl, th, tv = topHead
    let lensText = String.Join(", ", e.LogitLens |> Array.map (fun (l, v) -> $"{l} {v:F2}"))
    let layerText = String.Join(", ", e.AttributionByLayer |> Array.map (fun (l, v) -> $"{l} {v:F2}"))
    let first = List.head r.Run.Snapshots
    let last = List.last r.Run.Snapshots
    [ $"A {r.Run.Settings.Layers}-layer attention-only decoder (d_model {r.Run.Settings.DModel}, {r.Run.Settings.Heads} heads, LayerNorm, {r.Run.Settings.PositionalEmbedding} positions) is trained for {r.Run.Settings.Steps} steps on sequences of BOS and {2 * r.Run.Settings.MaxRepeat} random tokens (vocabulary {r.Run.Settings.Vocab}) in which a segment of L tokens, L drawn per sequence from [{r.Run.Settings.MinRepeat}, {r.Run.Settings.MaxRepeat}], appears twice in a row at a random offset; everything but the second copy is unpredictable, and the second copy is predictable only by finding the earlier occurrence of the current token and copying what followed it. Because L and the offset vary, the earlier copy is at no fixed distance: position alone does not solve the task. (With learned absolute positions, trial runs settled on position-keyed copying, best previous-token score at most 0.2 after 4,000 steps; with rotary positions the previous-token and induction heads form.) Snapshots every {r.Run.Settings.SnapshotEvery} steps measure a fixed held-out batch."
      $"The repeat loss goes from {first.RepeatLoss:F2} to {last.RepeatLoss:F2} nats, falling fastest in the interval ending at step {r.SteepestDropStep}: that is the in-context-learning bump of the training loss. The best previous-token head is L{pl}H{ph} (score {pv:F2} at the end; the best previous-token score {whenFormed r.PreviousTokenStep}); the best induction head is L{il}H{ih} (score {iv:F2} at the end; the best induction score {whenFormed r.InductionStep}). Letting the induction diagonal shift (attention from q to q − L + 1 + s, s ≤ {maxShift}, which copies by content when layer-0 heads look back s and s + 1 tokens), the best shifted-induction head is L{sl}H{sh} (score {sv:F2}; {whenFormed r.ShiftedInductionStep}) and the best look-back head (distance 1..{maxShift + 1}) L{bl}H{bh} (score {bv:F2})."
      $"At the end the components sum to the final residual stream to a relative error of {e.DecompositionError:E1}. The logit lens (repeat loss read out after each layer: {lensText}) says where the answer is written, and direct attribution splits the same logit difference (per layer: {layerText})."
      let h = r.Run.Settings.MaxRepeat
      let sumOver (name: string) layer (first: int) (last: int) =
          match e.Patching |> List.tryFind (fun p -> p.Component = name) with
          | Some p when layer < Array2D.length1 p.Recovered ->
              Seq.sum [ for c in first .. min last (Array2D.length2 p.Recovered - 1) -> (let v = p.Recovered.[layer, c] in if Double.IsFinite v then v else 0.0) ]
          | _ -> nan
      let layers = r.Run.Settings.Layers
      let l0First = sumOver "attn_out" 0 1 h
      let lastPreFirst = sumOver "resid_pre" (layers - 1) 1 h
      let lastAttnRepeat = sumOver "attn_out" (layers - 1) (h + 1) (2 * h)
      $"Patching single heads from the clean into the corrupted run restores the most through L{tl}H{th} ({tv:P0} of the clean metric). Patching by position uses sequences with one layout (L = {h}, BOS then the two copies). Summed over the first copy (positions 1..{h}): L0 attn_out restores {l0First:P0} and L{layers - 1} resid_pre {lastPreFirst:P0}; over the repeat (positions {h + 1}..{2 * h}), L{layers - 1} attn_out restores {lastAttnRepeat:P0}. Information about the first copy reaches the last layer through layer 0's writes at its positions, and the last layer writes the answer at the repeated positions."
      let correlations = String.Join(", ", e.AttributionVsExact |> List.map (fun c -> $"{c.Component} {c.Correlation:F2}"))
      let worst =
          e.AttributionVsExact
          |> List.collect (fun c -> c.WorstMisses |> List.map (fun (place, x, y) -> c.Component, place, x, y))
          |> List.sortByDescending (fun (_, _, x, y) -> abs (x - y)) |> List.head
      let wc, wp, wx, wy = worst
      $"Attribution patching (AtP: the first-order estimate (a_clean − a_corrupted) · ∂metric/∂a at the corrupted run, from one forward and backward of the corrupted batch and one forward of the clean one) estimates every one of these patches in {e.AttributionSeconds:F2} s against {e.ExactPatchingSeconds:F1} s for the exact sweeps. Its correlation with exact patching over the places of each map: {correlations}. Its worst miss is {wc} at {wp}: exact {wx:F2}, estimated {wy:F2} (metric values; clean {(List.head e.Patching).Clean:F2}, corrupted {(List.head e.Patching).Corrupted:F2}). The estimate is exact where the metric is linear in the patched activation and misses where a patch moves an attention pattern far along its softmax; it ranks where exact patching is worth running."
      let level = headFormedLevel
      if iv >= level && pv >= level && pl < il then
          $"The best previous-token head sits in layer {pl} and the best induction head in layer {il}, both above {level}: the order an induction circuit needs, where a later head keys on what an earlier previous-token head wrote (K-composition)."
      elif sv >= level && bv >= level && bl < sl then
          $"The canonical scores stay low (previous-token {pv:F2}, induction {iv:F2}) but the shifted ones do not (look-back {bv:F2} in layer {bl}, shifted induction {sv:F2} in layer {sl}): the model copies by content through a shifted circuit, matching on a token a few positions back instead of the previous one. The exact-offset induction score of TransformerLens would call this model induction-free."
      else
          $"Neither the canonical (previous-token {pv:F2}, induction {iv:F2}) nor the shifted scores (look-back {bv:F2}, shifted induction {sv:F2}) reach {level} in a composed order: at this training length no induction circuit has formed." ]

let section (r: InductionStudyResult) =
    let e = r.End
    let il, ih, iv = best e.Induction
    let pl, ph, pv = best e.PreviousToken
    let last = List.last r.Run.Snapshots
    { ReportSection.create "residual" "The residual stream: how a two-layer attention-only model learns induction" with
        Paragraphs = describe r
        KeyNumbers =
          [ { Label = "repeat loss at the end"; Value = $"{last.RepeatLoss:F3} nats" }
            { Label = "steepest fall of the repeat loss"; Value = $"step {r.SteepestDropStep}" }
            { Label = "best induction head"; Value = $"L{il}H{ih}, score {iv:F2}" }
            { Label = "best previous-token head"; Value = $"L{pl}H{ph}, score {pv:F2}" }
            { Label = "decomposition error (relative)"; Value = $"{e.DecompositionError:E1}" }
            { Label = "AtP vs exact patching, correlation"
              Value = String.Join(", ", e.AttributionVsExact |> List.map (fun c -> $"{c.Component} {c.Correlation:F2}")) } ]
        Figures = [ lossFigure r; headFigure e; lensFigure e; patchingFigure e.Patching ]
        Tables =
          [ { Title = "Direct logit attribution to logit(correct) − mean logit, repeat"
              Header = [ "component"; "mean contribution" ]
              Rows = [ for l, v in e.AttributionByHead -> [ l; $"{v:F3}" ] ] }
            { Title = "Attribution patching (AtP) against exact activation patching: the three worst misses of each map (metric values)"
              Header = [ "map"; "correlation"; "place"; "exact"; "AtP estimate" ]
              Rows =
                [ for c in e.AttributionVsExact do
                      for place, x, y in c.WorstMisses -> [ c.Component; $"{c.Correlation:F3}"; place; $"{x:F3}"; $"{y:F3}" ] ] } ] }

/// The study's answer: whether the model learned, and which heads carry the circuit.
let answer (r: InductionStudyResult) : Answer =
    let e = r.End
    let last = List.last r.Run.Snapshots
    let pl, ph, pv = best e.PreviousToken
    let il, ih, iv = best e.Induction
    let c = r.Run.Convergence
    let step (x: Nullable<int>) = if x.HasValue then string x.Value else "never"
    let level = headFormedLevel
    { Question = "How does a two-layer attention-only model solve induction, read through its residual stream?"
      Verdict =
        if not c.Learned then
            $"It did not learn within {r.Run.StepsRun} steps (repeat loss {last.RepeatLoss:F2} nats, learned means ≤ {r.Run.Settings.LearnedRepeatLoss}): no circuit to read"
        elif iv >= level && pv >= level && pl < il then
            $"Through a previous-token head (L{pl}H{ph}, score {pv:F2}) that an induction head (L{il}H{ih}, score {iv:F2}) composes with: repeat loss {last.RepeatLoss:F2} nats"
        else
            $"It learned (repeat loss {last.RepeatLoss:F2} nats) without the canonical composed heads (best previous-token L{pl}H{ph} {pv:F2}, induction L{il}H{ih} {iv:F2})"
      Evidence =
        $"learned at step {step c.LearnedStep}, converged at {step c.ConvergedStep} (cap {r.Run.Settings.Steps}); logit lens "
        + String.Join(", ", e.LogitLens |> Array.map (fun (l, v) -> $"{l} {v:F2}"))
        + $"; decomposition error {e.DecompositionError:E1}"
      KeyNumber = $"best induction score {iv:F2}, repeat loss {last.RepeatLoss:F3} nats (one seed: no interval)"
      Seeds = 1
      Runs = 1
      Converged = if c.Converged then 1 else 0 }

let settings (scale: Scale) = if scale = Full then fullSettings else quickSettings

let experiment : Experiment =
    Experiment.single "residual"
        "the residual stream as shared state: training a 2-layer attention-only model on induction, logit lens, attribution, patching"
        (fun scale ->
            let r = run (settings scale) 0 16 (Some checkpointPath) (fun line -> Console.Out.WriteLine line; Console.Out.Flush())
            { Answer = answer r; Sections = [ section r ]; Results = toJson r })
