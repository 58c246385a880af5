/// How a two-layer attention-only model learns induction, read through the residual stream:
/// the loss curve and its bump, when previous-token and induction heads appear, which layer writes
/// what at the end (logit lens, direct attribution), and patching that localizes the circuit.
module MechInterp.Analysis.Residual.InductionStudy

open System
open TorchSharp
open MechInterp.Model
open MechInterp.Hooks
open MechInterp.Data
open MechInterp.Analysis.Residual.Decomposition
open MechInterp.Analysis.Residual.LogitAttribution
open MechInterp.Analysis.Residual.HeadScores
open MechInterp.Analysis.Residual.InductionRun
open MechInterp.Analysis.Patching.ActivationPatching
open MechInterp.Analysis.Patching.AttributionPatching

/// A head "has formed" once its score on the evaluation batch reaches this level.
let headFormedLevel = 0.3

/// What the trained model does, measured at the end.
type EndAnalysis =
    { PreviousToken: HeadScoreTable
      Induction: HeadScoreTable
      LookBack: HeadScoreTable
      ShiftedInduction: HeadScoreTable
      /// Repeat loss of the logit lens after each layer.
      LogitLens: (string * float)[]
      /// Mean direct attribution to logit(correct) − mean logit over the repeat, per layer and per head.
      AttributionByLayer: (string * float)[]
      AttributionByHead: (string * float)[]
      /// max |Σ components − final resid| / max |final resid|.
      DecompositionError: float
      /// Clean: noise, A, A, noise; corrupted: the first copy of A redrawn; metric as the attribution's.
      Patching: PatchingResult list
      /// Attribution patching's estimates of the same patches (same order and layout).
      Attribution: PatchingResult list
      /// Each estimate against its exact patch: correlation over the places and the worst misses.
      AttributionVsExact: AttributionComparison list
      /// Seconds the exact sweeps and the estimates took.
      ExactPatchingSeconds: float
      AttributionSeconds: float }

type InductionStudyResult =
    { Run: InductionRunResult
      PreviousTokenStep: int option
      InductionStep: int option
      ShiftedInductionStep: int option
      /// The step at which the smoothed training loss falls fastest (the in-context-learning bump).
      SteepestDropStep: int
      End: EndAnalysis }

/// logit(correct next token) − mean logit on the positions only induction can predict (the batch's
/// repeat mask); the metric and the number of positions it counts.
let repeatMetric (model: HookedTransformer) (batch: TokenBatch) =
    let tokens = batch.Tokens
    let n = tokens.shape.[1]
    let next = torch.cat([| tokens.narrow(1L, 1L, n - 1L); tokens.narrow(1L, 0L, 1L) |], 1L)   // [batch, pos]; last column unused
    let full = correctMinusMean model next
    let repeat = InductionTask.RepeatMask batch                                                 // [batch, pos − 1]
    let mask = torch.cat([| repeat; torch.zeros([| tokens.shape.[0]; 1L |], dtype = torch.ScalarType.Bool) |], 1L)
    { Coefficients = full.Coefficients * mask.unsqueeze(2L).to_type(torch.float32) }, float (repeat.sum().item<int64>())

/// Patching reads positions, so its batch has one layout: BOS, r, r with L = MaxRepeat (a layout the
/// model trains on): first copy at positions 1..L, repeat at L+1..2L.
let patchRows (s: InductionSettings) (seed: int) (size: int) =
    InductionTask(s.Vocab, s.MaxRepeat, s.MaxRepeat).Sample(size, Random(seed * 7919 + 17))

let private meanOver (count: float) (stack: ResidualStack) =
    let totals = stack.Stack.sum([| 1L; 2L |]).data<float32>().ToArray()
    Array.zip stack.Labels (totals |> Array.map (fun t -> float t / count))

/// The end-of-training analysis of any model trained on the task (e.g. one loaded from a checkpoint).
let analyseEnd (s: InductionSettings) (model: HookedTransformer) (patchBatch: int) (seed: int) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    use batch = evalBatch s seed
    let struct (_, cache) = model.RunWithCache(batch.Tokens, residualFilter model)
    use cache = cache
    let metric, count = repeatMetric model batch
    let final = cache.[HookNames.ResidPost(s.Layers - 1)]
    let parts = decomposeResid model cache
    let err = (parts.Stack.sum(0L) - final).abs().max().item<float32>() / final.abs().max().item<float32>()
    let repeated = InductionTask.RepeatMask batch
    use cleanBatch = patchRows s seed patchBatch
    use gen = new torch.Generator(uint64 (seed + 1))
    let corrupted = (task s).CorruptFirstCopy(cleanBatch, gen)
    let m, c = repeatMetric model cleanBatch
    let patchMetricTensor (logits: torch.Tensor) = (evaluate m logits).sum().div(torch.tensor (float32 c))
    let patchMetric (logits: torch.Tensor) = float ((patchMetricTensor logits).item<float32>())
    let clock = Diagnostics.Stopwatch.StartNew()
    let exact = patchEverything model cleanBatch.Tokens corrupted patchMetric
    let exactSeconds = clock.Elapsed.TotalSeconds
    clock.Restart()
    let estimates = attributionPatching model cleanBatch.Tokens corrupted patchMetricTensor
    let attributionSeconds = clock.Elapsed.TotalSeconds
    { PreviousToken = scoreHeads "previous-token" previousTokenScore model cache
      Induction = scoreHeads "induction" (attentionTo (InductionTask.InductionKeys batch)) model cache
      LookBack = scoreHeads "look-back" lookBackScore model cache
      ShiftedInduction = scoreHeads "shifted induction" (shiftedInductionScore batch) model cache
      LogitLens = logitLensLoss model cache batch.Tokens repeated
      AttributionByLayer = directAttribution model cache parts metric |> meanOver count
      AttributionByHead = directAttribution model cache (decomposeResidByHead model cache) metric |> meanOver count
      DecompositionError = float err
      Patching = exact
      Attribution = estimates
      AttributionVsExact = List.map2 (compare 3) exact estimates
      ExactPatchingSeconds = exactSeconds
      AttributionSeconds = attributionSeconds }

/// Trains until converged or the cap (saving the final model to `checkpoint` when given) and analyses.
let run (s: InductionSettings) (seed: int) (patchBatch: int) (checkpoint: string option) (log: string -> unit) =
    onOneThread (fun () ->
        let batched, results = train s [ { ModelSeed = seed; DataSeed = seed } ] true log (fun _ -> noIntervention)
        let result = List.exactlyOne results
        let single = batched.Instance 0
        batched.Dispose()
        use model = single
        checkpoint |> Option.iter (fun path ->
            match IO.Path.GetDirectoryName(IO.Path.GetFullPath path) with
            | null -> ()
            | dir -> IO.Directory.CreateDirectory dir |> ignore
            model.Save path)
        let steepest =
            result.Snapshots |> List.pairwise
            |> List.maxBy (fun (a, b) -> (a.RepeatLoss - b.RepeatLoss) / float (b.Step - a.Step))
            |> snd
        { Run = result
          PreviousTokenStep = firstStepAbove headFormedLevel (fun snap -> snap.PreviousToken) result.Snapshots
          InductionStep = firstStepAbove headFormedLevel (fun snap -> snap.Induction) result.Snapshots
          ShiftedInductionStep = firstStepAbove headFormedLevel (fun snap -> snap.ShiftedInduction) result.Snapshots
          SteepestDropStep = steepest.Step
          End = analyseEnd s model patchBatch seed })

/// Quick: under a minute on one core; Full: a wider model and a longer cap. Rotary positions, because with
/// learned absolute positions the model settled on position-keyed copying (best previous-token score ≤ 0.2
/// after 4000 steps) instead of the previous-token → induction circuit. Trial runs of 5 seeds at d_model 64
/// (2,000 steps each): 4 heads at lr 1e-3 learned (repeat loss < 1 nat) in 4/5 seeds, 3 of them with
/// canonical induction heads; 4 heads at lr 2e-3 learned in 5/5 by step 800 but 2 of them through a shifted
/// circuit; 8 heads at lr 3e-3 (constant) learned in 5/5 by step 700, every one with canonical previous-token
/// (0.58–0.94) and induction heads (0.90–0.92).
let quickSettings =
    { DModel = 64; Layers = 2; Heads = 8; Vocab = 64; MaxRepeat = 16; MinRepeat = 8; PositionalEmbedding = "rotary"
      Steps = 1500; BatchSize = 32; LearningRate = 3e-3; SnapshotEvery = 50; EvalBatchSize = 64
      LearnedRepeatLoss = 1.0; ConvergenceWindow = 300 }

let fullSettings =
    { quickSettings with DModel = 128; Heads = 8; Steps = 3000; LearningRate = 1e-3; SnapshotEvery = 100; EvalBatchSize = 128 }

/// A matrix as rows, rounded for the results file.
/// A number for JSON: rounded, and null where it is not finite (JSON has no NaN).
let finite (x: float) = if Double.IsFinite x then Nullable(Math.Round(x, 5)) else Nullable()

let rows (m: float[,]) =
    Array.init (Array2D.length1 m) (fun r -> Array.init (Array2D.length2 m) (fun c -> finite m.[r, c]))

let labelled (xs: (string * float)[]) = xs |> Array.map (fun (l, v) -> {| label = l; value = finite v |})

let settingsRecord (s: InductionSettings) =
    {| d_model = s.DModel; n_layers = s.Layers; n_heads = s.Heads; attn_only = true; d_vocab = s.Vocab
       max_repeat = s.MaxRepeat; min_repeat = s.MinRepeat; positional_embedding_type = s.PositionalEmbedding; steps = s.Steps; batch_size = s.BatchSize; learning_rate = s.LearningRate
       learning_rate_schedule = "linear warmup over 50 steps, then constant"; optimizer = "AdamW (beta 0.9, 0.99; weight decay 0.01), gradient norm clipped to 1 per run"
       snapshot_every = s.SnapshotEvery; eval_batch_size = s.EvalBatchSize
       learned = $"held-out repeat loss <= {s.LearnedRepeatLoss} nats"
       converged = (criterion s).Describe() |}

let patchingRecord (p: PatchingResult) =
    {| ``component`` = p.Component; rows = p.RowLabels; columns = p.ColumnLabels; clean = finite p.Clean
       corrupted = finite p.Corrupted; values = rows p.Values; recovered = rows p.Recovered |}

/// The numbers of residual.json.
let toJson (r: InductionStudyResult) : Text.Json.Nodes.JsonNode =
    let optional (x: int option) = Option.toNullable x
    let node =
        {| settings = settingsRecord r.Run.Settings
           seed = r.Run.ModelSeed
           seconds = r.Run.Seconds
           steps_run = r.Run.StepsRun
           learned_step = Option.toNullable (Option.ofNullable r.Run.Convergence.LearnedStep)
           converged_step = Option.toNullable (Option.ofNullable r.Run.Convergence.ConvergedStep)
           train_loss = r.Run.Losses |> Array.map finite
           snapshots =
            [| for s in r.Run.Snapshots ->
                   {| step = s.Step; loss = finite s.Loss; repeat_loss = finite s.RepeatLoss
                      previous_token_scores = rows s.PreviousToken.Values; induction_scores = rows s.Induction.Values
                      look_back_scores = rows s.LookBack.Values; shifted_induction_scores = rows s.ShiftedInduction.Values |} |]
           max_shift = maxShift
           head_formed_level = headFormedLevel
           previous_token_head_step = optional r.PreviousTokenStep
           induction_head_step = optional r.InductionStep
           shifted_induction_head_step = optional r.ShiftedInductionStep
           steepest_drop_step = r.SteepestDropStep
           final_previous_token_scores = rows r.End.PreviousToken.Values
           final_induction_scores = rows r.End.Induction.Values
           final_look_back_scores = rows r.End.LookBack.Values
           final_shifted_induction_scores = rows r.End.ShiftedInduction.Values
           logit_lens_repeat_loss = labelled r.End.LogitLens
           attribution_by_layer = labelled r.End.AttributionByLayer
           attribution_by_head = labelled r.End.AttributionByHead
           decomposition_error = finite r.End.DecompositionError
           patching = r.End.Patching |> List.map patchingRecord |> Array.ofList
           attribution_patching = r.End.Attribution |> List.map patchingRecord |> Array.ofList
           attribution_vs_exact =
            [| for c in r.End.AttributionVsExact ->
                   {| ``component`` = c.Component; correlation = finite c.Correlation
                      worst_misses = [| for place, x, y in c.WorstMisses -> {| place = place; exact = finite x; estimate = finite y |} |] |} |]
           exact_patching_seconds = finite r.End.ExactPatchingSeconds
           attribution_patching_seconds = finite r.End.AttributionSeconds |}
    match Text.Json.JsonSerializer.SerializeToNode node with
    | null -> invalidOp "the results serialized to null"
    | n -> n
