/// The residual-hypothesis experiment in the main job: predictions of both views, the numbers, one verdict per
/// prediction, figures (loss against depth, lens curves, CKA heatmaps), deletion and swap tables, and
/// artifacts/results/residual_hypothesis.json.
module MechInterp.Analysis.Residual.HypothesisSection

open System
open MechInterp.Analysis.Report
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Residual.Hypothesis

/// The main job's scale: the toy language only. Measured here, with the machine to itself, one arm of five d_model-32
/// induction models took 91–173 s (1,400–1,500 steps), so the induction task would put this section past its 4 minutes
/// and the main job past 20; `--full` runs both tasks.
let quickSettings =
    { DModel = 32; Heads = 4; Depths = [ 2; 4 ]; Seeds = [ 0; 1; 2; 3; 4 ]; Tasks = [ Language ]
      Induction = { Steps = 1500; BatchSize = 32; LearningRate = 3e-3; EvalEvery = 100; ConvergenceWindow = 300 }
      Language = { Steps = 800; BatchSize = 16; LearningRate = 3e-3; EvalEvery = 50; ConvergenceWindow = 300 }
      InductionVocab = 64; MaxRepeat = 16; MinRepeat = 8; LanguageLength = 32
      LensBatch = 48; AnalysisBatch = 48; LensFit = TunedLens.defaultFit }

let fullSettings =
    { quickSettings with
        DModel = 64; Heads = 8; Depths = [ 2; 4; 8 ]; Tasks = [ Induction; Language ]
        Induction = { quickSettings.Induction with Steps = 4000 }
        Language = { quickSettings.Language with Steps = 3000 }
        LensBatch = 128; AnalysisBatch = 128; LensFit = { TunedLens.defaultFit with Steps = 500 } }

let settings = function Quick -> quickSettings | Full -> fullSettings

let private ci (xs: float list) =
    match xs with
    | [] -> "—"
    | _ -> let s = Intervals.summarize xs in let lo, hi = s.Ci95 in $"{s.Mean:F3} [{lo:F3}, {hi:F3}]"

/// A measure of one run, reduced to one number per run for a prediction.
type Prediction =
    { Key: string
      Name: string
      /// What the shared-stream view predicts, and what the re-encoding view predicts.
      SharedView: string
      ReencodingView: string
      /// The measure per run; None where the depth has no such layer (e.g. no intermediate stream).
      Measure: Run -> float option
      /// True when the shared-stream view predicts a larger value for the residual arm.
      ResidualHigher: bool }

let private mean (xs: float seq) = if Seq.isEmpty xs then nan else Seq.average xs
/// Streams after 1 .. depth − 1 blocks: those that are neither the embedding nor the output.
let private intermediate (xs: float[]) = if xs.Length <= 2 then [||] else xs.[1 .. xs.Length - 2]
let private nonFinal (xs: float[]) = xs.[0 .. xs.Length - 2]
let private someIf (xs: float[]) = if xs.Length = 0 then None else Some(mean xs)

let predictions =
    [ { Key = "b"; Name = "logit lens: loss read out after each intermediate block"
        SharedView = "every layer writes into the space the unembedding reads: intermediate streams, read out untranslated, predict better than a plain model's"
        ReencodingView = "intermediate streams are in other bases: untranslated they predict no better than a plain model's"
        Measure = (fun r -> someIf (intermediate r.LogitLensLoss)); ResidualHigher = false }
      { Key = "c"; Name = "tuned-lens gap: KL(logit lens) − KL(tuned lens), mean over streams before the last"
        SharedView = "little translation is needed: the gap is small"
        ReencodingView = "an affine translator recovers what the untranslated readout misses: the gap is large"
        Measure = (fun r -> someIf (Array.map2 (-) (nonFinal r.LogitLensKl) (nonFinal r.TunedLensKl))); ResidualHigher = false }
      { Key = "d1"; Name = "deleting one block: loss increase, mean over blocks"
        SharedView = "the other blocks still read and write the same stream: the loss rises moderately"
        ReencodingView = "the next block reads a space it was not trained on: the loss rises to near chance"
        Measure = (fun r -> someIf r.DeletionIncrease); ResidualHigher = false }
      { Key = "d2"; Name = "swapping two adjacent blocks: loss increase, mean over pairs"
        SharedView = "each block's read and write are in the same space, so order matters less"
        ReencodingView = "each block expects its predecessor's encoding: a swap breaks both"
        Measure = (fun r -> someIf r.SwapIncrease); ResidualHigher = false }
      { Key = "e"; Name = "linear CKA between the streams after adjacent blocks, mean over pairs"
        SharedView = "a block edits part of the stream: adjacent streams are alike (CKA near 1)"
        ReencodingView = "each block re-encodes: adjacent streams are less alike"
        Measure = (fun r -> someIf [| for i in 0 .. Array2D.length1 r.Cka - 2 -> r.Cka.[i, i + 1] |]); ResidualHigher = true }
      { Key = "f"; Name = "edit size ‖resid_post − resid_pre‖ / ‖resid_pre‖, mean over blocks"
        SharedView = "a block adds a delta to a stream it keeps: the change, relative to the stream, is smaller than in a plain model"
        ReencodingView = "a block replaces the stream: the change is as large as the stream itself, and larger than a residual block's"
        Measure = (fun r -> someIf r.EditSize); ResidualHigher = false } ]

/// One cell of the comparison: a task and depth, with both arms.
type Cell =
    { Task: TaskKind
      Depth: int
      Residual: ArmResult
      Plain: ArmResult }

let cells (results: ArmResult list) =
    [ for (task, depth), group in results |> List.groupBy (fun a -> a.Task, a.Depth) do
          match group |> List.tryFind (fun a -> a.Arm = Residual), group |> List.tryFind (fun a -> a.Arm = Plain) with
          | Some r, Some p -> yield { Task = task; Depth = depth; Residual = r; Plain = p }
          | _ -> () ]

/// A verdict from two samples: supported when the difference's 95% interval lies on the shared-stream side,
/// contradicted when it lies on the other, else not distinguishable at these seeds.
type Verdict =
    { Prediction: string
      Cell: Cell
      ResidualText: string
      PlainText: string
      DifferenceText: string
      Verdict: string }

let private verdictText (residualHigher: bool) (res: float list) (plain: float list) =
    if res.Length < 2 || plain.Length < 2 then "—", "too few learned runs for an interval"
    else
        let diff, (lo, hi) = Intervals.differenceCi95 plain res                     // mean(res) − mean(plain)
        let text = $"{diff:F3} [{lo:F3}, {hi:F3}]"
        let forShared, against = if residualHigher then lo > 0.0, hi < 0.0 else hi < 0.0, lo > 0.0
        text, (if forShared then "supported" elif against then "contradicted" else "not distinguishable")

/// Runs measured for a verdict: learned ones only (no conclusion from a run that did not learn).
let private usable (a: ArmResult) = learnedRuns a

let verdicts (results: ArmResult list) =
    [ for cell in cells results do
          let res, plain = usable cell.Residual, usable cell.Plain
          let n = cell.Residual.Runs.Length
          if res.IsEmpty then
              yield { Prediction = "all"; Cell = cell; ResidualText = $"0/{n} learned"; PlainText = $"{plain.Length}/{n} learned"
                      DifferenceText = "—"; Verdict = "no verdict: the residual arm did not learn" }
          else
              // a: optimization, on every run (censored where it never learned) and on the final loss.
              let obs (a: ArmResult) = [ for r in a.Runs -> Survival.ofStep (Option.ofNullable r.Convergence.LearnedStep) a.StepsRun ]
              let test = Survival.logRank (obs cell.Residual) (obs cell.Plain)
              let steps (a: ArmResult) = a.Runs |> List.choose (fun r -> Option.ofNullable r.Convergence.LearnedStep) |> List.map float
              let loss (a: ArmResult) = a.Runs |> List.map (fun r -> r.FinalLoss)
              let lossDiff, lossVerdict = verdictText false (loss cell.Residual) (loss cell.Plain)
              // ObservedMinusExpected > 0: the plain arm (b) learns earlier or more often than expected.
              let stepsVerdict =
                  if test.PValue < 0.05 then (if test.ObservedMinusExpected < 0.0 then "supported" else "contradicted") else "not distinguishable"
              let combined =
                  match stepsVerdict, lossVerdict with
                  | "contradicted", _ | _, "contradicted" -> "contradicted"
                  | "supported", _ | _, "supported" -> "supported"
                  | _ -> "not distinguishable"
              yield { Prediction = "a"; Cell = cell
                      ResidualText = $"{(steps cell.Residual).Length}/{n} learned, steps {ci (steps cell.Residual)}; final loss {ci (loss cell.Residual)}"
                      PlainText = $"{(steps cell.Plain).Length}/{n} learned, steps {ci (steps cell.Plain)}; final loss {ci (loss cell.Plain)}"
                      DifferenceText = $"log-rank p = {test.PValue:F3}; final loss {lossDiff}"
                      Verdict = $"{combined} (steps: {stepsVerdict}; final loss: {lossVerdict})" }
              for p in predictions do
                  let values (runs: Run list) = runs |> List.choose p.Measure
                  let rv, pv = values res, values plain
                  if not rv.IsEmpty then
                      let diff, verdict =
                          if plain.IsEmpty then "—", "plain arm did not learn (censored): no comparison"
                          else verdictText p.ResidualHigher rv pv
                      yield { Prediction = p.Key; Cell = cell; ResidualText = $"{ci rv} ({rv.Length} runs)"
                              PlainText = (if pv.IsEmpty then "—" else $"{ci pv} ({pv.Length} runs)")
                              DifferenceText = diff; Verdict = verdict } ]

let private palette = dict [ Residual, "#1f77b4"; Plain, "#d62728" ]

let private depthFigure (s: Settings) (results: ArmResult list) =
    let panel task (title: string) (measure: ArmResult -> float list) (ylabel: string) =
        { Panel.empty $"{taskName task}: {title}" with
            XLabel = "depth (blocks)"; YLabel = ylabel; ShowLegend = true
            Series =
              [ for arm in [ Residual; Plain ] do
                    let arms = results |> List.filter (fun a -> a.Task = task && a.Arm = arm) |> List.sortBy (fun a -> a.Depth)
                    let xs = arms |> List.map (fun a -> float a.Depth) |> Array.ofList
                    yield Line($"{armName arm} (mean)", xs, arms |> List.map (fun a -> mean (measure a)) |> Array.ofList, palette.[arm], true)
                    let points = [ for a in arms do for v in measure a -> float a.Depth, v ]
                    yield Points($"{armName arm} (runs)", points |> List.map fst |> Array.ofList, points |> List.map snd |> Array.ofList, palette.[arm], None) ] }
    let steps (a: ArmResult) = a.Runs |> List.map (fun r -> float (defaultArg (Option.ofNullable r.Convergence.LearnedStep) a.StepsRun))
    Figure.create "depth" "Final loss and steps to learned against depth"
        $"Per task: the held-out loss at the end (left) and the step each run learned ({learnedText Induction} / {learnedText Language}; runs that never learned drawn at the last step, censored) against the number of blocks, for the residual and the plain arm, {s.Seeds.Length} seeds each (points) and their mean (lines)."
        2
        [ for task in s.Tasks do
              yield panel task "final held-out loss" (fun a -> a.Runs |> List.map (fun r -> r.FinalLoss)) "loss (nats)"
              yield panel task "steps to learned" steps "step" ]

/// The loss of a uniform prediction over the task's vocabulary.
let private chance (s: Settings) (task: TaskKind) =
    log (float (match task with Induction -> s.InductionVocab | Language -> MechInterp.Data.ToyLanguage.Vocab))

let private lensFigure (s: Settings) (results: ArmResult list) =
    Figure.create "lens" "Logit lens and tuned lens, per stream"
        "Next-token loss on held-out text when the stream after 0 .. depth blocks is read out through the model's final norm and unembedding, untranslated (logit lens, solid) or through a fitted affine translator per layer (tuned lens, markers), mean over the learned runs of each arm; the dashed line is a uniform prediction. The last point is the model's output."
        (List.length s.Depths)
        [ for task in s.Tasks do
              for depth in s.Depths ->
                  { Panel.empty $"{taskName task}, depth {depth}" with
                      XLabel = "blocks read"; YLabel = "loss (nats)"; ShowLegend = true
                      Series =
                        [ for a in results |> List.filter (fun a -> a.Task = task && a.Depth = depth) do
                              let runs = learnedRuns a
                              if not runs.IsEmpty then
                                  let xs = Array.init (depth + 1) float
                                  let avg (f: Run -> float[]) = Array.init (depth + 1) (fun l -> runs |> List.averageBy (fun r -> (f r).[l]))
                                  yield Line($"{armName a.Arm} logit lens", xs, avg (fun r -> r.LogitLensLoss), palette.[a.Arm], false)
                                  yield Points($"{armName a.Arm} tuned lens", xs, avg (fun r -> r.TunedLensLoss), palette.[a.Arm], None)
                          yield HLine(chance s task, "uniform") ] } ]

let private ckaFigure (s: Settings) (results: ArmResult list) =
    let deepest = List.max s.Depths
    Figure.create "cka" $"Linear CKA between streams, depth {deepest}"
        "Linear CKA between the stream after i blocks (row) and after j blocks (column), on held-out tokens, mean over the learned runs (all runs where none learned), coloured blue (0) through white (0.5) to red (1); 1 is the same representation up to rotation and scale."
        2
        [ for task in s.Tasks do
              for a in results |> List.filter (fun a -> a.Task = task && a.Depth = deepest) ->
                  let runs = match learnedRuns a with [] -> a.Runs | rs -> rs
                  let z = Array2D.init (deepest + 1) (deepest + 1) (fun i j -> runs |> List.averageBy (fun r -> r.Cka.[i, j]))
                  { Panel.empty $"{taskName task}, {armName a.Arm} ({(learnedRuns a).Length}/{a.Runs.Length} learned)" with
                      XLabel = "blocks (j)"; YLabel = "blocks (i)"; Series = [ Heatmap(z, 0.0, 1.0) ] } ]

let private surgeryTable (title: string) (label: int -> string) (increase: Run -> float[]) (kept: Run -> float[]) (results: ArmResult list) =
    { Title = title
      Header = [ "task"; "depth"; "arm"; "learned runs"; "loss increase, mean [95% CI], per position"; "top-1 accuracy kept, mean" ]
      Rows =
        [ for a in results do
              let runs = match learnedRuns a with [] -> a.Runs | rs -> rs
              let width = (increase (List.head runs)).Length
              if width > 0 then
                  yield [ taskName a.Task; string a.Depth; armName a.Arm; $"{(learnedRuns a).Length}/{a.Runs.Length}"
                          String.Join("; ", [ for k in 0 .. width - 1 -> $"{label k}: {ci [ for r in runs -> (increase r).[k] ]}" ])
                          String.Join("; ", [ for k in 0 .. width - 1 -> $"{label k}: {mean [ for r in runs -> (kept r).[k] ]:F2}" ]) ] ] }

let private runsTable (results: ArmResult list) =
    let never (x: Nullable<int>) = if x.HasValue then string x.Value else "never"
    { Title = "Runs"
      Header = [ "task"; "depth"; "arm"; "seeds"; "learned step per seed"; "converged step per seed"; "final loss, mean [95% CI]"; "top-1 accuracy"; "steps run"; "seconds" ]
      Rows =
        [ for a in results ->
              [ taskName a.Task; string a.Depth; armName a.Arm
                String.Join(", ", a.Runs |> List.map (fun r -> r.Seed))
                String.Join(", ", a.Runs |> List.map (fun r -> never r.Convergence.LearnedStep))
                String.Join(", ", a.Runs |> List.map (fun r -> never r.Convergence.ConvergedStep))
                ci (a.Runs |> List.map (fun r -> r.FinalLoss))
                ci (a.Runs |> List.map (fun r -> r.Accuracy))
                string a.StepsRun
                $"{a.Seconds:F0}" ] ] }

let private predictionName (key: string) =
    if key = "a" then "optimization: steps to learned (censored) and final loss"
    elif key = "all" then "all"
    else (predictions |> List.find (fun p -> p.Key = key)).Name

let private verdictTable (vs: Verdict list) =
    { Title = "Verdict per prediction, task and depth (learned runs only; difference = residual − plain, Welch 95% interval)"
      Header = [ "prediction"; "task"; "depth"; "residual"; "plain"; "difference"; "verdict" ]
      Rows = [ for v in vs -> [ $"{v.Prediction}. {predictionName v.Prediction}"; taskName v.Cell.Task; string v.Cell.Depth; v.ResidualText; v.PlainText; v.DifferenceText; v.Verdict ] ] }

/// Verdicts that compare two learned arms (not the cells without one, nor those where the plain arm never learned).
let private compared (vs: Verdict list) =
    vs |> List.filter (fun v -> [ "supported"; "contradicted"; "not distinguishable" ] |> List.exists v.Verdict.StartsWith)

let private tally (vs: Verdict list) =
    let vs = compared vs
    let count (word: string) = vs |> List.filter (fun v -> v.Verdict.StartsWith word) |> List.length
    count "supported", count "contradicted", count "not distinguishable", vs.Length

/// Cells (task, depth) where the residual arm learned and the plain arm never did.
let private plainNeverLearned (results: ArmResult list) =
    cells results |> List.filter (fun c -> not (learnedRuns c.Residual).IsEmpty && (learnedRuns c.Plain).IsEmpty)

let answer (s: Settings) (results: ArmResult list) : Answer =
    let vs = verdicts results
    let supported, contradicted, unclear, total = tally vs
    let never = plainNeverLearned results
    let neverText =
        if never.IsEmpty then ""
        else "; the plain arm never learned at " + String.Join(", ", never |> List.map (fun c -> $"{taskName c.Task} depth {c.Depth} (residual {(learnedRuns c.Residual).Length}/{c.Residual.Runs.Length})"))
    let runs = results |> List.sumBy (fun a -> a.Runs.Length)
    let converged = results |> List.sumBy (fun a -> (convergedRuns a).Length)
    let byKey = compared vs |> List.groupBy (fun v -> v.Prediction)
    let perPrediction =
        String.Join("; ", [ for key, group in byKey -> let sp, c, u, t = tally group in $"{key}: {sp} supported, {c} contradicted, {u} unclear of {t}" ])
    let deepest = List.max s.Depths
    // The deepest depth at which both arms learned, where the lenses compare two working models.
    let key =
        compared vs
        |> List.filter (fun v -> v.Prediction = "c")
        |> List.sortByDescending (fun v -> v.Cell.Depth)
        |> List.tryHead
    { Question = "Do a decoder's layers edit one shared residual stream, rather than re-encode into new spaces (tested against plain decoders whose layers replace the stream)?"
      Verdict =
        if total = 0 && never.IsEmpty then "Not answered: the residual arm learned at no task and depth, so no comparison can be drawn"
        elif supported > contradicted && supported * 2 >= total then
            $"Yes: {supported} of {total} comparisons of learned arms (per prediction, task and depth) go the shared-stream way, {contradicted} the other, {unclear} not distinguishable{neverText}"
        elif contradicted > supported then
            $"No: {contradicted} of {total} comparisons go against the shared-stream view, {supported} for it, {unclear} not distinguishable{neverText}"
        else $"Partly: {supported} of {total} comparisons support the shared-stream view, {contradicted} contradict it, {unclear} not distinguishable{neverText}"
      Evidence = perPrediction
      KeyNumber =
        match key with
        | Some v -> $"tuned-lens gap (KL nats), {taskName v.Cell.Task} depth {v.Cell.Depth}: residual {v.ResidualText}, plain {v.PlainText}"
        | None -> "no tuned-lens comparison: at no depth did both arms learn"
      Seeds = s.Seeds.Length
      Runs = runs
      Converged = converged }

let section (s: Settings) (results: ArmResult list) =
    let vs = verdicts results
    let supported, contradicted, unclear, total = tally vs
    let deepest = List.max s.Depths
    let depthsText, seedsText = String.Join(", ", s.Depths), String.Join(", ", s.Seeds)
    let describeTask = function
        | Induction -> $"induction (attention-only, rotary, a segment of {s.MinRepeat}–{s.MaxRepeat} random tokens repeated; learned: {learnedText Induction}, at most {s.Induction.Steps} steps)"
        | Language -> $"the toy language (MLP blocks; learned: {learnedText Language}, at most {s.Language.Steps} steps)"
    let tasksText =
        String.Join(" and ", s.Tasks |> List.map describeTask)
        + (if List.contains Induction s.Tasks then "" else " (the induction task runs with --full: at this scale it would take the section past its time)")
    let neverText =
        match plainNeverLearned results with
        | [] -> ""
        | never ->
            " The plain arm never learned within the cap at " + String.Join(", ", never |> List.map (fun c -> $"{taskName c.Task} depth {c.Depth}"))
            + ", where the residual arm learned in " + String.Join(", ", never |> List.map (fun c -> $"{(learnedRuns c.Residual).Length}/{c.Residual.Runs.Length}"))
            + " runs: prediction (a) at its strongest; (b)–(f) have no learned plain model to compare there, and the residual arm's numbers are in the table."
    { ReportSection.create "residual-hypothesis" "Residual hypothesis: one shared stream, or a new space per layer?" with
        Paragraphs =
          [ $"Two arms of the same decoder, identical in width (d_model {s.DModel}, {s.Heads} heads), depth and parameter count: residual (each sublayer adds its output to the stream) and plain (each sublayer's output replaces it: x ← attn(ln1(x)), x ← mlp(ln2(x))). Depths {depthsText}; tasks: {tasksText}. Seeds {seedsText} per arm, depth and task, trained as one batched model (each with its own weights, optimizer state and data), stopping once every seed has converged (learned, then the held-out loss flat within 2%% + 0.005 nats over {(taskSetup s (List.head s.Tasks)).ConvergenceWindow} steps)."
            "What each view predicts. (a) Optimization: the shared-stream view (and the note that started this project: the optimizer moves through a continuously sloped cost space) predicts that residual models learn at every depth and no slower with depth; the re-encoding view allows plain models to learn as well. (b)–(f) are measured on a held-out batch per seed: "
            + String.Join(" ", [ for p in predictions -> $"({p.Key}) {p.Name}: shared stream — {p.SharedView}; re-encoding — {p.ReencodingView}." ])
            + $" The tuned lens is one affine translator per stream (x ↦ x + xA + b, A and b zero at the start, so it begins as the logit lens), fitted by Adam ({s.LensFit.Steps} full-batch steps, lr {s.LensFit.LearningRate}) on a separate held-out batch to minimize the KL from the model's output; deletion runs the blocks without one of them, a swap exchanges two adjacent ones (model surgery as in Lad et al. 2024)."
            $"Verdicts: {supported} of {total} comparisons support the shared-stream view, {contradicted} contradict it, {unclear} are not distinguishable at {s.Seeds.Length} seeds.{neverText} A verdict needs the residual arm to have learned; measures (b)–(f) use learned runs only, and a plain arm that never learned is reported as censored. Checkpoints of seed 0 of each arm at depth {deepest} are in artifacts/checkpoints/ (residual_hypothesis-<task>-<arm>-depth{deepest}.safetensors; the config's `residual` field says which arm, and Python code must read it)." ]
        KeyNumbers =
          [ for v in vs do
                if v.Cell.Depth = deepest && (v.Prediction = "a" || v.Prediction = "c" || v.Prediction = "d1") then
                    yield { Label = $"{v.Prediction}. {taskName v.Cell.Task} depth {v.Cell.Depth}"; Value = $"residual {v.ResidualText}; plain {v.PlainText}: {v.Verdict}" } ]
        Figures = [ depthFigure s results; lensFigure s results; ckaFigure s results ]
        Tables =
          [ verdictTable vs
            runsTable results
            surgeryTable "Deleting one block (learned runs; all runs where none learned)" (fun k -> $"−{k}") (fun r -> r.DeletionIncrease) (fun r -> r.DeletionAccuracyKept) results
            surgeryTable "Swapping adjacent blocks" (fun k -> $"{k}↔{k + 1}") (fun r -> r.SwapIncrease) (fun r -> r.SwapAccuracyKept) results ] }

let private finite = MechInterp.Analysis.Residual.InductionStudy.finite

let toJson (s: Settings) (results: ArmResult list) : Text.Json.Nodes.JsonNode =
    let arr (xs: float[]) = xs |> Array.map finite
    let node =
        {| settings =
            {| d_model = s.DModel; heads = s.Heads; depths = s.Depths; seeds = s.Seeds; tasks = s.Tasks |> List.map taskName
               induction = s.Induction; language = s.Language; induction_vocab = s.InductionVocab; max_repeat = s.MaxRepeat
               min_repeat = s.MinRepeat; language_length = s.LanguageLength; lens_batch = s.LensBatch; analysis_batch = s.AnalysisBatch
               lens_fit = s.LensFit |}
           arms =
            [ for a in results ->
                  {| task = taskName a.Task; depth = a.Depth; arm = armName a.Arm; residual = (a.Arm = Residual)
                     steps_run = a.StepsRun; seconds = finite a.Seconds
                     runs = a.Runs.Length; learned = (learnedRuns a).Length; converged = (convergedRuns a).Length
                     checkpoint = (if a.Depth = List.max s.Depths then checkpointName a.Task a.Arm a.Depth else null)
                     per_seed =
                      [ for r in a.Runs ->
                            {| seed = r.Seed; learned_step = r.Convergence.LearnedStep; converged_step = r.Convergence.ConvergedStep
                               final_loss = finite r.FinalLoss; accuracy = finite r.Accuracy
                               logit_lens_loss = arr r.LogitLensLoss; tuned_lens_loss = arr r.TunedLensLoss
                               logit_lens_kl = arr r.LogitLensKl; tuned_lens_kl = arr r.TunedLensKl
                               deletion_loss_increase = arr r.DeletionIncrease; swap_loss_increase = arr r.SwapIncrease
                               deletion_accuracy_kept = arr r.DeletionAccuracyKept; swap_accuracy_kept = arr r.SwapAccuracyKept
                               cka = MechInterp.Analysis.Residual.InductionStudy.rows r.Cka
                               edit_size = arr r.EditSize |} ] |} ]
           verdicts =
            [ for v in verdicts results ->
                  {| prediction = v.Prediction; name = predictionName v.Prediction; task = taskName v.Cell.Task; depth = v.Cell.Depth
                     residual = v.ResidualText; plain = v.PlainText; difference = v.DifferenceText; verdict = v.Verdict |} ] |}
    match Text.Json.JsonSerializer.SerializeToNode node with
    | null -> failwith "serializing the residual-hypothesis results produced null"
    | n -> n

/// The id of one arm's unit: "<task>-depth<N>-<arm>".
let unitId (task: TaskKind) (depth: int) (arm: Arm) = $"{taskName task}-depth{depth}-{armName arm}"

/// The experiment over the settings `settingsOf` gives per scale: one unit per task × depth × arm, each one batched
/// model of every seed (as the single-process run trains them). Checkpoints go to `checkpointDir` when given.
let experimentWith (settingsOf: Scale -> Settings) (checkpointDir: string option) : Experiment =
    let log (line: string) = Console.Out.WriteLine line; Console.Out.Flush()
    { Name = "residual_hypothesis"
      Description = "residual hypothesis: do layers edit one shared stream, or re-encode? residual vs plain decoders"
      Units =
        fun scale ->
            let s = settingsOf scale
            [ for task, depth, arm in cellsOf s ->
                  WorkUnit.create (unitId task depth arm) (unitId task depth arm) s.Seeds (fun () -> runArm s log checkpointDir task depth arm) ]
      Combine =
        fun scale partials ->
            let s = settingsOf scale
            let results = [ for task, depth, arm in cellsOf s -> Partial.ofNode<ArmResult> partials.[unitId task depth arm] ]
            { Answer = answer s results; Sections = [ section s results ]; Results = toJson s results } }

let experiment : Experiment = experimentWith settings (Some(IO.Path.Combine("artifacts", "checkpoints")))
