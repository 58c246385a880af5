/// experiment_1 as an experiment of the main job: its results file (experiment1.json) and its report
/// section with loss bands, final losses, steps to threshold and the residual analysis of each variant.
module MechInterp.Analysis.Discretization.Section

open System
open MechInterp.Analysis.Report
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Discretization.Quantization
open MechInterp.Analysis.Discretization.Experiment1

let private palette = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#9467bd"; "#ff7f0e"; "#8c564b"; "#e377c2"; "#17becf"; "#7f7f7f"; "#bcbd22" |]
let private color i = palette.[i % palette.Length]

let private reached (v: VariantResult) = v.Runs |> List.choose (fun r -> r.LearnedStep)
let private learnedText (s: Experiment1Settings) = $"held-out repeat loss ≤ {s.Training.LearnedRepeatLoss} nat"
let private inductionScores (v: VariantResult) = v.Runs |> List.map (fun r -> let _, _, s = r.Analysis.BestInduction in s)
let private ci (s: Intervals.Summary) = let lo, hi = s.Ci95 in $"{s.Mean:F3} [{lo:F3}, {hi:F3}]"

let private bandFigure (r: Experiment1Result) =
    let s = r.Settings
    let threshold = s.Training.LearnedRepeatLoss
    let panel i (v: VariantResult) =
        let steps, means, lows, highs = repeatBand v.Runs
        { Panel.empty v.Variant.Name with
            XLabel = "step"; YLabel = "held-out repeat loss"
            Series =
              [ Line("mean", steps, means, color i, false)
                Line("95% CI low", steps, lows, color i, false)
                Line("95% CI high", steps, highs, color i, false)
                HLine(threshold, "learned") ] }
    let overlay =
        { Panel.empty "All variants (means)" with
            XLabel = "step"; YLabel = "held-out repeat loss"; ShowLegend = true
            Series =
              [ for i, v in List.indexed r.Variants ->
                    let steps, means, _, _ = repeatBand v.Runs
                    Line(v.Variant.Name, steps, means, color i, false)
                yield HLine(threshold, "learned") ] }
    Figure.create "loss-bands" "Held-out repeat loss, mean and 95% interval over seeds"
        $"The loss on the second copy of the segment (only induction predicts it) on each run's fixed held-out batch, every {s.Training.SnapshotEvery} steps, per variant; the thin lines bound the Student-t 95%% interval of the mean over {s.Seeds.Length} seeds. The dashed line is the learned threshold ({learnedText s})."
        3 (overlay :: List.mapi panel r.Variants)

let private summaryFigure (r: Experiment1Result) =
    let xs = [| for i in 0 .. r.Variants.Length - 1 -> float i |]
    let names = String.Join(", ", r.Variants |> List.mapi (fun i v -> $"{i} {v.Variant.Name}"))
    let perSeed (f: VariantResult -> float list) =
        [ for i, v in List.indexed r.Variants ->
              let ys = f v |> Array.ofList
              Points(v.Variant.Name, Array.create ys.Length (float i), ys, color i, None) ]
    Figure.create "summary" "Final loss, steps to learned, induction heads"
        $"Variants on the x axis: {names}. Left: final held-out loss per seed (points) and the mean with its 95%% interval (bars and whiskers as points). Middle: the step each run learned ({learnedText r.Settings}); runs that never did are drawn at the last step, {r.StepsRun}, as censored. Right: the best induction score among all heads, per seed."
        3
        [ { Panel.empty "Final loss" with
              XLabel = "variant"; YLabel = "held-out loss"
              Series =
                [ yield Bars("mean", xs, r.Variants |> List.map (fun v -> v.FinalLoss.Mean) |> Array.ofList, Array.init xs.Length color)
                  yield Points("95% CI", Array.append xs xs,
                               Array.append (r.Variants |> List.map (fun v -> fst v.FinalLoss.Ci95) |> Array.ofList)
                                            (r.Variants |> List.map (fun v -> snd v.FinalLoss.Ci95) |> Array.ofList),
                               "#000000", None)
                  yield! perSeed (fun v -> v.Runs |> List.map (fun run -> run.FinalLoss)) ] }
          { Panel.empty "Steps to learned" with
              XLabel = "variant"; YLabel = "step"
              Series =
                [ yield! perSeed (reached >> List.map float)
                  let censored =
                      [ for i, v in List.indexed r.Variants do
                            for run in v.Runs do if run.LearnedStep.IsNone then yield float i ]
                  if not censored.IsEmpty then
                      yield Points("never (censored)", Array.ofList censored, Array.create censored.Length (float r.StepsRun), "#7f7f7f", None)
                  yield HLine(float r.StepsRun, "cap") ] }
          { Panel.empty "Best induction score" with
              XLabel = "variant"; YLabel = "score"
              Series = perSeed inductionScores } ]

let private table (r: Experiment1Result) =
    let never = function Some (x: int) -> string x | None -> "never"
    { Title = "Per variant (seeds " + String.Join(", ", r.Settings.Seeds) + ")"
      Header = [ "variant"; "verdict"; "learned step per seed"; "converged step per seed"; "log-rank p (steps to learned)"
                 "final loss, mean [95% CI]"; "Δ vs standard"; "p (permutation)"
                 "best induction score per seed (shifted)"; "decomposition error (max)"; "logit-lens repeat loss, mean per layer" ]
      Rows =
        [ for v in r.Variants ->
              let lens =
                  let labels = (List.head v.Runs).Analysis.LogitLens |> Array.map fst
                  labels |> Array.mapi (fun i l -> let m = v.Runs |> List.averageBy (fun run -> snd run.Analysis.LogitLens.[i]) in $"{l} {m:F2}")
              [ v.Variant.Name
                v.Verdict
                String.Join(", ", v.Runs |> List.map (fun run -> never run.LearnedStep))
                String.Join(", ", v.Runs |> List.map (fun run -> never run.ConvergedStep))
                (match v.LearnedVersusStandard with Some t -> $"{t.PValue:F3}" | None -> "—")
                ci v.FinalLoss
                (match v.VersusStandard with Some c -> sprintf "%+.3f" c.Difference | None -> "—")
                (match v.VersusStandard with Some c -> $"{c.PValue:F3}" | None -> "—")
                String.Join(", ", v.Runs |> List.map (fun run -> let _, _, c = run.Analysis.BestInduction in let _, _, sh = run.Analysis.BestShiftedInduction in $"{c:F2} ({sh:F2})"))
                $"""{(v.Runs |> List.map (fun run -> run.Analysis.DecompositionError) |> List.max):E1}"""
                String.Join(", ", lens) ] ] }

/// The two-paragraph conclusion, written from the numbers.
let conclusion (r: Experiment1Result) =
    let standard = List.head r.Variants
    let ste = r.Variants |> List.filter (fun v -> isGrid StraightThrough v.Variant)
    let blocked = r.Variants |> List.filter (fun v -> isGrid Blocked v.Variant)
    let vq = r.Variants |> List.filter (fun v -> isCodebook v.Variant)
    let n = r.Settings.Seeds.Length
    let describe (v: VariantResult) =
        let c = v.VersusStandard
        let sig' = match c with Some c when c.PValue < 0.05 -> "significant" | Some _ -> "not significant" | None -> ""
        let p = match c with Some c -> $"{c.PValue:F3}" | None -> "—"
        $"{v.Variant.Name} {ci v.FinalLoss} ({(reached v).Length}/{n} learn; final loss p = {p}, {sig'})"
    let hurt = ste |> List.filter (fun v -> v.VersusStandard |> Option.exists (fun c -> c.PValue < 0.05 && c.Difference > 0.0))
    let fine = ste |> List.filter (fun v -> not (List.contains v hurt))
    let names (vs: VariantResult list) = if vs.IsEmpty then "none" else String.Join(", ", vs |> List.map (fun v -> v.Variant.Name))
    let q = r.Settings.Range
    let formed (v: VariantResult) = inductionScores v |> List.filter (fun s -> s >= MechInterp.Analysis.Residual.InductionStudy.headFormedLevel) |> List.length
    let formedShifted (v: VariantResult) =
        v.Runs |> List.filter (fun run -> let _, _, sc = run.Analysis.BestShiftedInduction in sc >= MechInterp.Analysis.Residual.InductionStudy.headFormedLevel) |> List.length
    let layer0 (v: VariantResult) =
        v.Runs |> List.filter (fun run -> let l, _, sc = run.Analysis.BestInduction in l = 0 && sc >= MechInterp.Analysis.Residual.InductionStudy.headFormedLevel) |> List.length
    let clamp = r.Variants |> List.filter (fun v -> match v.Variant.Discretizer with Some(Clamp _) -> true | _ -> false)
    let steErr = (ste @ vq @ clamp) |> List.collect (fun v -> v.Runs |> List.map (fun run -> run.Analysis.DecompositionError))
    [ "Verdicts (steps to learned, log-rank test against the standard with runs that never learned censored at the cap): "
      + String.Join("; ", r.Variants |> List.tail |> List.map (fun v -> $"{v.Variant.Name} {v.Verdict}")) + ". "
      + $"Final held-out loss, mean and 95%% interval over {n} seeds (same initializations and data order per seed): standard {ci standard.FinalLoss} ({(reached standard).Length}/{n} learn, {learnedText r.Settings}); "
      + String.Join("; ", (ste @ blocked @ clamp @ vq) |> List.map describe) + ". "
      + (if ste.IsEmpty then ""
         else $"With a straight-through gradient, quantizing the stream after every block (clamp to ±{q}, k levels) significantly raised the final loss for: {names hurt}; it did not, at this seed count, for: {names fine}. ")
      + (if blocked.IsEmpty then ""
         else
             let chance = log (float (r.Settings.Training.Vocab - 1))
             let levels (v: VariantResult) = match v.Variant.Discretizer with Some(Grid g) -> g.Levels | _ -> 0
             let versus (b: VariantResult) =
                 match ste |> List.tryFind (fun v -> levels v = levels b) with
                 | Some v -> $"{b.Variant.Name} ends at {b.FinalLoss.Mean:F3} against {v.FinalLoss.Mean:F3} for {v.Variant.Name} on the same grid"
                 | None -> $"{b.Variant.Name} ends at {b.FinalLoss.Mean:F3}"
             $"Without straight-through the rounding passes no gradient to anything before the last block's output, so only the unembedding and final norm learn: "
             + String.Join("; ", blocked |> List.map versus)
             + $" (chance on uniform tokens is ln {r.Settings.Training.Vocab - 1} = {chance:F2} nats). ")
      + (match r.Variants |> List.tryFind (fun v -> match v.Variant.Discretizer with Some(Clamp _) -> true | _ -> false) with
         | None -> ""
         | Some c ->
             let p = match c.VersusStandard with Some cmp -> $"p = {cmp.PValue:F3}" | None -> ""
             $"The clamp-only control (the same clamp to ±{q} and straight-through gradient, no rounding) ends at {ci c.FinalLoss} ({p}, {(reached c).Length}/{n} learn): the part of a grid variant's cost that clamping alone explains. ")
      + (if vq.IsEmpty then ""
         else
             let usage (v: VariantResult) =
                 let all = v.Runs |> List.collect (fun run -> run.Analysis.CodebookUsage)
                 if all.IsEmpty then "" else
                     let used = all |> List.averageBy (fun (_, u, _) -> float u)
                     let perplexity = all |> List.averageBy (fun (_, _, p) -> p)
                     $"{v.Variant.Name} uses {used:F0} entries on average per codebook (assignment perplexity {perplexity:F0})"
             let vqHurt = vq |> List.filter (fun v -> v.VersusStandard |> Option.exists (fun c -> c.PValue < 0.05 && c.Difference > 0.0))
             $"Replacing each position's whole vector by the nearest codebook entry (at most log2 K bits per position, against d_model values on a grid) significantly raised the final loss for: {names vqHurt}; "
             + String.Join("; ", vq |> List.map usage) + ".")
      $"The residual analysis of the trained discretized models: the stream no longer decomposes exactly into the sum of its writes (relative error up to {(if steErr.IsEmpty then 0.0 else List.max steErr):E1} with straight-through, against {(standard.Runs |> List.map (fun run -> run.Analysis.DecompositionError) |> List.max):E1} for the standard model), because each block's output is rounded, clamped or replaced by a code before the next reads it; the logit lens and the per-head scores still read it. Induction heads (best score ≥ {MechInterp.Analysis.Residual.InductionStudy.headFormedLevel}) formed in {formed standard}/{n} standard runs and in "
      + String.Join(", ", (ste @ blocked @ clamp @ vq) |> List.map (fun v -> $"{formed v}/{n} {v.Variant.Name}"))
      + $" runs; counting shifted induction heads too (attention to q − L + 1 + s, s ≤ {MechInterp.Analysis.Residual.InductionRun.maxShift}), in {formedShifted standard}/{n} standard and "
      + String.Join(", ", (ste @ blocked @ clamp @ vq) |> List.map (fun v -> $"{formedShifted v}/{n} {v.Variant.Name}"))
      + " runs."
      + (if formed standard = 0 then ""
         else $" A layer-0 head sees only each position's own token and position, so it can find the earlier copy of the current token but not the token after it; of the {formed standard} standard runs with an induction head, {layer0 standard} have their best one in layer 0 and {formed standard - layer0 standard} in layer 1, where it can compose with a layer-0 look-back head.")
      + (let copyingAtChance =
             (blocked @ vq @ ste)
             |> List.filter (fun v -> formedShifted v > 0 && v.FinalLoss.Mean > log (float (r.Settings.Training.Vocab - 1)) - 0.15)
         if copyingAtChance.IsEmpty then ""
         else $" In {names copyingAtChance} some runs form copying attention patterns while the loss stays near chance: a head's pattern is computed from the normalized stream it reads, but what it writes must pass through the discretization before the unembedding sees it.") ]

let section (r: Experiment1Result) =
    let standard = List.head r.Variants
    { ReportSection.create "experiment1" "experiment_1: does discretizing the residual stream hurt convergence?" with
        Paragraphs =
          [ $"Variants of the same 2-layer attention-only decoder (d_model {r.Settings.Training.DModel}, {r.Settings.Training.Heads} heads, {r.Settings.Training.PositionalEmbedding} positions) trained on the induction task (a segment of {r.Settings.Training.MinRepeat}–{r.Settings.Training.MaxRepeat} random tokens repeated once at a random offset) for at most {r.Settings.Training.Steps} steps (this run: {r.StepsRun}), differing only in what happens to the residual stream after every block; all {r.Variants.Length} variants × {r.Settings.Seeds.Length} seeds train as one batched model, each run with its own weights, optimizer state and data stream. A run has learned when its {learnedText r.Settings}, and converged when, after that, {(MechInterp.Analysis.Residual.InductionRun.criterion r.Settings.Training).Describe()}. Quantization: each dimension is clamped to [−{r.Settings.Range}, {r.Settings.Range}] and rounded to the nearest of k evenly spaced levels, endpoints included (a fixed range, chosen because LayerNorm before every reader makes the stream's scale free for the model to set). Straight-through: x_q = x + (Q(x) − x).detach(); without: x_q = Q(x) with zero gradient. Final loss is the loss on the seed's fixed held-out batch at the end, with the variant's quantization, compared with the standard's by an exact two-sided permutation test; steps to learned are compared by a log-rank test (runs that never learned censored at the last step), its p-value by exact relabelling of the seeds."
            + (if r.Variants |> List.exists (fun v -> isCodebook v.Variant) then
                   " Codebook (vq-K): each position's whole vector is replaced by the nearest of K learned entries, one codebook per block and run, entries following an exponential moving average (decay 0.99) of the vectors assigned to them, initialized from the first batch; the gradient passes straight through, and a commitment loss 0.25·‖x − sg(q)‖² adds its gradient (not its value) to training."
               else " A vector-quantized (codebook) variant was not run.") ]
          @ conclusion r
        KeyNumbers =
          [ yield { Label = "standard final loss"; Value = ci standard.FinalLoss }
            for v in List.tail r.Variants ->
                { Label = $"{v.Variant.Name} final loss"
                  Value = ci v.FinalLoss + (match v.VersusStandard with Some c -> $" (p = {c.PValue:F3})" | None -> "") } ]
        Figures = [ bandFigure r; summaryFigure r ]
        Tables = [ table r ] }

/// experiment_1's answer, from the per-variant verdicts.
let answer (r: Experiment1Result) : Answer =
    let standard = List.head r.Variants
    let others = List.tail r.Variants
    let n = r.Settings.Seeds.Length
    let learnedSteps (v: VariantResult) = v.Runs |> List.choose (fun run -> run.LearnedStep) |> List.map float
    let never = others |> List.filter (fun v -> (learnedSteps v).IsEmpty)
    let like = others |> List.filter (fun v -> v.Verdict.StartsWith "converges like")
    let later = others |> List.filter (fun v -> v.Verdict.StartsWith "converges later" || v.Verdict.StartsWith "converges in")
    let names (vs: VariantResult list) = if vs.IsEmpty then "none" else String.Join(", ", vs |> List.map (fun v -> v.Variant.Name))
    let stdLearned = learnedSteps standard
    let stdText =
        match stdLearned with
        | [] -> "never"
        | [ x ] -> $"{x:F0}"
        | xs -> let s = Intervals.summarize xs in let lo, hi = s.Ci95 in $"{s.Mean:F0} [{lo:F0}, {hi:F0}]"
    let runs = r.Variants |> List.sumBy (fun v -> v.Runs.Length)
    let converged = r.Variants |> List.sumBy (fun v -> v.Runs |> List.filter (fun run -> run.ConvergedStep.IsSome) |> List.length)
    let hurt = never.Length + later.Length
    { Question = "Does discretizing the residual stream (quantizing it after every block) hurt convergence?"
      Verdict =
        if stdLearned.Length < n then
            $"Not answered: the standard model learned in only {stdLearned.Length}/{n} seeds within {r.StepsRun} steps"
        elif hurt = others.Length then
            $"Yes: the standard learns in {n}/{n} seeds; no discretized variant converges like it ({never.Length} of {others.Length} do not converge within {r.StepsRun} steps: {names never}; later or in fewer runs: {names later})"
        elif hurt = 0 then $"No: every discretized variant converges like the standard ({names like})"
        else $"For some variants: {names never} do not converge within {r.StepsRun} steps, {names later} converge later or in fewer runs, {names like} converge like the standard"
      Evidence = String.Join("; ", others |> List.map (fun v -> $"{v.Variant.Name}: {v.Verdict}; final loss {ci v.FinalLoss}"))
      KeyNumber =
        let heads = standard.Runs |> List.map (fun run -> let _, _, score = run.Analysis.BestInduction in score)
        $"standard: learned (repeat loss ≤ {r.Settings.Training.LearnedRepeatLoss} nat) at step {stdText}; final loss {ci standard.FinalLoss}; best induction score per seed "
        + String.Join(", ", heads |> List.map (sprintf "%.2f"))
      Seeds = n
      Runs = runs
      Converged = converged }

let settings (scale: Scale) = if scale = Full then fullSettings else quickSettings

/// One unit: every variant and seed train as one batched model, so a split would change what is trained together.
let experiment : Experiment =
    Experiment.single "experiment1"
        "experiment_1: quantizing the residual stream after every block, with and without a straight-through gradient"
        (fun scale ->
            let r = run (settings scale) (fun line -> Console.Out.WriteLine line; Console.Out.Flush())
            { Answer = answer r; Sections = [ section r ]; Results = toJson r })
