/// Training small decoders on repeated random tokens while watching their heads: snapshots of the
/// repeat loss and of every head's previous-token and induction score through training, and the steps
/// each run learned (held-out repeat loss under a threshold) and converged. Runs of one configuration
/// (seeds, variants) train as one batched model. Shared by the induction study and experiment_1 (which
/// adds hooks that rewrite the stream).
module MechInterp.Analysis.Residual.InductionRun

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Data
open MechInterp.Training
open MechInterp.Analysis.Residual.HeadScores

/// What to train: an attention-only decoder (d_model, heads, layers) on InductionTask(vocab, maxRepeat, minRepeat).
type InductionSettings =
    { DModel: int
      Layers: int
      Heads: int
      Vocab: int
      /// Segment length range: each sequence repeats a segment of L ∈ [MinRepeat, MaxRepeat] tokens at a random offset.
      MaxRepeat: int
      MinRepeat: int
      /// "standard" (learned absolute) or "rotary".
      PositionalEmbedding: string
      /// The step cap: a run that has not converged by then stops there, and is reported as not converged.
      Steps: int
      BatchSize: int
      LearningRate: float
      /// Snapshot (held-out loss, repeat loss and head scores on the fixed held-out batch) every this many steps,
      /// and at the end; convergence is judged at snapshots.
      SnapshotEvery: int
      EvalBatchSize: int
      /// Learned: the held-out repeat loss at or under this many nats (the task is solved by induction).
      LearnedRepeatLoss: float
      /// Converged: learned, then the held-out loss flat (within 2% + 0.005 nats) over this many steps.
      ConvergenceWindow: int }

/// The model's state at one step, measured on the fixed evaluation batch with the run's hooks attached.
type Snapshot =
    { Step: int
      /// Masked next-token loss over every prediction (what training minimizes).
      Loss: float
      /// Loss on the second copy of the segment only: what only induction can predict.
      RepeatLoss: float
      PreviousToken: HeadScoreTable
      Induction: HeadScoreTable
      /// Per head, the largest look-back score over distances 1..maxShift + 1 (previous-token is distance 1).
      LookBack: HeadScoreTable
      /// Per head, the largest induction score over key shifts 0..maxShift (shift 0 is Induction).
      ShiftedInduction: HeadScoreTable }

/// One run of a batch: the model's initialization seed and the seed of its data stream (and held-out batch).
type Arm = { ModelSeed: int; DataSeed: int }

type InductionRunResult =
    { Settings: InductionSettings
      ModelSeed: int
      DataSeed: int
      /// Training loss at every step run (1-based step = index + 1).
      Losses: float[]
      Snapshots: Snapshot list
      /// The step the run learned and the step it converged (None where it did not).
      Convergence: ConvergenceRecord
      /// Steps the batch ran: the cap, or fewer when every run of the batch converged first.
      StepsRun: int
      /// Wall time of the whole batch, and how many runs shared it.
      Seconds: float
      BatchRuns: int }

/// What a batch attaches to its model: hooks on every forward pass (training steps and snapshots) that see
/// [instance, ...] and may act per instance, and an extra training-loss term per instance [instance], read after
/// each training forward (e.g. a codebook's commitment loss).
type Intervention =
    { Hooks: Hook[]
      ExtraLoss: unit -> torch.Tensor option }

let noIntervention = { Hooks = [||]; ExtraLoss = fun () -> None }
let hooksOnly (hooks: Hook[]) = { Hooks = hooks; ExtraLoss = fun () -> None }

let task (s: InductionSettings) = InductionTask(s.Vocab, s.MaxRepeat, s.MinRepeat)

let config (s: InductionSettings) (modelSeed: int) =
    DecoderConfig(d_model = s.DModel, n_layers = s.Layers, n_heads = s.Heads, attn_only = true,
                  d_vocab = s.Vocab, n_ctx = 1 + 2 * s.MaxRepeat, normalization_type = "LN",
                  positional_embedding_type = s.PositionalEmbedding, seed = modelSeed)

/// Learned and converged as the settings define them, judged on the held-out repeat loss and loss.
let criterion (s: InductionSettings) =
    ConvergenceCriterion(Metric = "repeat_loss", Threshold = s.LearnedRepeatLoss, Window = s.ConvergenceWindow,
                         RelativeTolerance = 0.02, AbsoluteTolerance = 0.005)

/// The fixed held-out batch of a data seed: the trainer's evaluation batch (disjoint in seed from the training stream).
let evalBatch (s: InductionSettings) (dataSeed: int) =
    (task s).Sample(s.EvalBatchSize, Random(Trainer.EvalSeed dataSeed))

/// How far the induction diagonal may shift and still count: a layer-1 head attending to q − L + 1 + s copies
/// by content when layer-0 heads look back s and s + 1 tokens (trial runs formed s = 3 instead of the
/// previous-token circuit at a higher learning rate).
let maxShift = 4

/// Per head: the largest mean attention at distance d back (from each query q ≥ d), over d = 1..maxShift + 1
/// → [head]; at least the previous-token score.
let lookBackScore (pattern: torch.Tensor) =
    let distances = min (maxShift + 1) (int pattern.shape.[2] - 1)
    let struct (best, _) = torch.stack([| for d in 1 .. distances -> diagonalScore pattern d d |]).max(0L)
    best

/// Per head: the largest induction score over shifts 0..maxShift → [head].
let shiftedInductionScore (batch: TokenBatch) (pattern: torch.Tensor) =
    let scores =
        [| for s in 0 .. maxShift do
               let keys = InductionTask.InductionKeys(batch, s)
               if keys.ge(TorchSharp.Scalar.op_Implicit 0L).any().item<bool>() then attentionTo keys pattern |]
    let struct (best, _) = torch.stack(scores).max(0L)
    best

/// Loss, repeat loss and head scores of the model (with `hooks`) on a batch, one snapshot per instance (one for
/// an ordinary model); a batched model's scores are computed for all instances at once.
let measure (model: HookedTransformer) (hooks: Hook[]) (batch: TokenBatch) (step: int) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    let names = patternNames model |> Set.ofList
    let struct (logits, cache) = model.RunWithCache(batch.Tokens, Func<string, bool>(names.Contains), hooks)
    use cache = cache
    let values (t: torch.Tensor) = t.reshape(-1L).to_type(torch.float64).data<float>().ToArray()
    let losses = values (Losses.Masked(logits, batch.Tokens, batch.LossMask))
    let repeats = values (Losses.Masked(logits, batch.Tokens, InductionTask.RepeatMask batch))
    let tables name score =
        if model.IsBatched then scoreHeadsByInstance name score model cache
        else [| scoreHeads name score model cache |]
    let previous = tables "previous-token" previousTokenScore
    let induction = tables "induction" (attentionTo (InductionTask.InductionKeys batch))
    let lookBack = tables "look-back" lookBackScore
    let shifted = tables "shifted induction" (shiftedInductionScore batch)
    [ for i in 0 .. losses.Length - 1 ->
          { Step = step
            Loss = losses.[i]
            RepeatLoss = repeats.[i]
            PreviousToken = previous.[i]
            Induction = induction.[i]
            LookBack = lookBack.[i]
            ShiftedInduction = shifted.[i] } ]

/// Trains every arm as one instance of a batched model; `intervene model` is attached to every training
/// forward pass and every snapshot (e.g. quantization of the stream). An arm's model seed fixes its
/// initialization, its data seed its batches. With `stopWhenConverged`, the batch stops once every run has
/// converged (a run that converged earlier trains on with the others until then); otherwise it runs to the cap.
/// Returns the batched model (instance i is arm i) and each arm's run.
/// `log` gets a progress line every 100 steps.
let train (s: InductionSettings) (arms: Arm list) (stopWhenConverged: bool) (log: string -> unit) (intervene: HookedTransformer -> Intervention) =
    if arms.IsEmpty then invalidArg (nameof arms) "no runs to train: arms is empty"
    let model = HookedTransformer.Batched(config s arms.Head.ModelSeed, [| for a in arms -> a.ModelSeed |])
    let intervention = intervene model
    let attached = intervention.Hooks
    let t = task s
    use eval = TokenBatch.Stack([| for a in arms -> evalBatch s a.DataSeed |])
    let snapshots = [| for _ in arms -> Collections.Generic.List<Snapshot>() |]
    let record (snaps: Snapshot list) = snaps |> List.iteri (fun i snap -> snapshots.[i].Add snap)
    record (measure model attached eval 0)
    let forward = Func<HookedTransformer, torch.Tensor, torch.Tensor>(fun m tokens ->
        if attached.Length = 0 then m.forward tokens else m.RunWithHooks(tokens, attached))
    let loss =
        Func<HookedTransformer, TokenBatch, torch.Tensor>(fun m batch ->
            let loss = Losses.Masked(forward.Invoke(m, batch.Tokens), batch.Tokens, batch.LossMask)   // [instance]
            match intervention.ExtraLoss() with
            // The extra term adds its gradient but not its value: the loss history stays the language-model
            // loss, comparable across variants.
            | Some extra -> loss + (extra - extra.detach())
            | None -> loss)
    // Evaluations run inside the step before OnStep reports it: the step being evaluated is the last reported + 1.
    let lastStep = ref 0
    let metrics =
        Func<HookedTransformer, TokenBatch, Collections.Generic.IReadOnlyDictionary<string, torch.Tensor>>(fun m batch ->
            let snaps = measure m attached batch (lastStep.Value + 1)
            record snaps
            readOnlyDict [ "repeat_loss", torch.tensor([| for snap in snaps -> snap.RepeatLoss |]) ])
    let configs =
        [| for a in arms ->
               // A constant learning rate after warmup, so that the cap does not shape the trajectory.
               TrainingConfig(Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, MinLrRatio = 1.0, Seed = a.DataSeed,
                              EvalEvery = s.SnapshotEvery, EvalBatchSize = s.EvalBatchSize, Progress = false,
                              Convergence = criterion s, StopWhenConverged = stopWhenConverged) |]
    let clock = Diagnostics.Stopwatch.StartNew()
    let progress (info: StepInfo) =
        lastStep.Value <- info.Step
        if info.Step % 100 = 0 then
            let learned = snapshots |> Array.filter (fun snaps -> snaps |> Seq.exists (fun snap -> snap.RepeatLoss <= s.LearnedRepeatLoss)) |> Array.length
            let mean = info.Losses |> Seq.average
            log (sprintf "  step %d/%d: mean training loss %.3f, %d/%d runs learned, %.0f s" info.Step s.Steps mean learned arms.Length clock.Elapsed.TotalSeconds)
    let trainer =
        Trainer(model, t, configs, Forward = forward, Loss = loss, Metrics = metrics, OnStep = Action<StepInfo>(progress))
    let result = trainer.Run()
    model,
    [ for i, a in List.indexed arms ->
          let run = result.Runs.[i]
          { Settings = s
            ModelSeed = a.ModelSeed
            DataSeed = a.DataSeed
            Losses = run.History |> Seq.map (fun p -> p.Loss) |> Array.ofSeq
            Snapshots = List.ofSeq snapshots.[i]
            Convergence = nonNull run.Convergence   // trained with a criterion
            StepsRun = result.StepsRun
            Seconds = result.Seconds
            BatchRuns = arms.Length } ]

/// Runs `f` with libtorch on one thread, restoring the setting after. These models are too small for
/// intra-op threads to pay, and on a shared machine libtorch's thread barriers made steps ~20× slower.
let onOneThread (f: unit -> 'a) = MechInterp.Settings.WithThreads(1, System.Func<'a>(f))

/// The trailing mean of the last `window` losses at each step.
let smoothed (window: int) (losses: float[]) =
    Array.init losses.Length (fun i ->
        let from = max 0 (i - window + 1)
        Array.average losses.[from .. i])

/// The first snapshot step at which some head's score reaches `level`; None if none does.
let firstStepAbove (level: float) (score: Snapshot -> HeadScoreTable) (snapshots: Snapshot list) =
    snapshots
    |> List.tryFind (fun snap -> let _, _, v = best (score snap) in v >= level)
    |> Option.map (fun snap -> snap.Step)
