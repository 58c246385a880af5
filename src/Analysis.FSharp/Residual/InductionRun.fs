/// Training a small decoder on repeated random tokens while watching its heads: snapshots of the
/// repeat loss and of every head's previous-token and induction score through training.
/// Shared by the induction study and experiment_1 (which adds hooks that rewrite the stream).
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
      Steps: int
      BatchSize: int
      LearningRate: float
      /// Snapshot (eval loss and head scores on a fixed batch) every this many steps, and at the end.
      SnapshotEvery: int
      EvalBatchSize: int }

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

type InductionRunResult =
    { Settings: InductionSettings
      ModelSeed: int
      DataSeed: int
      /// Training loss at every step (1-based step = index + 1).
      Losses: float[]
      Snapshots: Snapshot list
      Seconds: float }

/// What a run attaches to its model: hooks on every forward pass (training steps and snapshots), and an extra
/// training-loss term read after each training forward (e.g. a codebook's commitment loss).
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

/// `size` rows of a data seed's evaluation stream: a smaller size gives a prefix of the same rows.
let evalRows (s: InductionSettings) (dataSeed: int) (size: int) =
    (task s).Sample(size, Random(dataSeed * 7919 + 17))

/// The fixed evaluation batch of a data seed (disjoint in seed from the training stream).
let evalBatch (s: InductionSettings) (dataSeed: int) = evalRows s dataSeed s.EvalBatchSize

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

/// Loss, repeat loss and head scores of the model (with `hooks`) on a batch.
let measure (s: InductionSettings) (model: HookedTransformer) (hooks: Hook[]) (batch: TokenBatch) (step: int) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    let names = patternNames model |> Set.ofList
    let struct (logits, cache) = model.RunWithCache(batch.Tokens, Func<string, bool>(names.Contains), hooks)
    use cache = cache
    let repeated = InductionTask.RepeatMask batch
    { Step = step
      Loss = Losses.Masked(logits, batch.Tokens, batch.LossMask).item<float32>() |> float
      RepeatLoss = Losses.Masked(logits, batch.Tokens, repeated).item<float32>() |> float
      PreviousToken = scoreHeads "previous-token" previousTokenScore model cache
      Induction = scoreHeads "induction" (attentionTo (InductionTask.InductionKeys batch)) model cache
      LookBack = scoreHeads "look-back" lookBackScore model cache
      ShiftedInduction = scoreHeads "shifted induction" (shiftedInductionScore batch) model cache }

/// Trains one model; `intervene model` is attached to every training forward pass and every snapshot
/// (e.g. quantization of the stream). The model seed fixes the initialization, the data seed the batches.
let train (s: InductionSettings) (modelSeed: int) (dataSeed: int) (intervene: HookedTransformer -> Intervention) =
    let model = new HookedTransformer(config s modelSeed)
    let intervention = intervene model
    let attached = intervention.Hooks
    use eval = evalBatch s dataSeed
    let snapshots = Collections.Generic.List<Snapshot>()
    snapshots.Add(measure s model attached eval 0)
    let loss =
        Func<HookedTransformer, TokenBatch, torch.Tensor>(fun m batch ->
            let logits = if attached.Length = 0 then m.forward batch.Tokens else m.RunWithHooks(batch.Tokens, attached)
            let loss = Losses.Masked(logits, batch.Tokens, batch.LossMask)
            match intervention.ExtraLoss() with
            // The extra term adds its gradient but not its value: the loss history stays the language-model
            // loss, comparable across variants.
            | Some extra -> loss + (extra - extra.detach())
            | None -> loss)
    let onStep =
        Action<StepInfo>(fun info ->
            if info.Step % s.SnapshotEvery = 0 || info.Step = s.Steps then
                snapshots.Add(measure s info.Model attached eval info.Step))
    let trainer =
        Trainer(model, task s,
                TrainingConfig(Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate,
                               Seed = dataSeed, EvalEvery = 0, Progress = false),
                Loss = loss, OnStep = onStep)
    let result = trainer.Run()
    model,
    { Settings = s
      ModelSeed = modelSeed
      DataSeed = dataSeed
      Losses = result.History |> Seq.map (fun p -> p.Loss) |> Array.ofSeq
      Snapshots = List.ofSeq snapshots
      Seconds = result.Seconds }

/// Runs `f` with libtorch on one thread, restoring the setting after. These models are too small for
/// intra-op threads to pay, and on a shared machine libtorch's thread barriers made steps ~20× slower.
let onOneThread (f: unit -> 'a) = MechInterp.Settings.WithThreads(1, System.Func<'a>(f))

/// The trailing mean of the last `window` losses at each step.
let smoothed (window: int) (losses: float[]) =
    Array.init losses.Length (fun i ->
        let from = max 0 (i - window + 1)
        Array.average losses.[from .. i])

/// The first 1-based step at which the trailing-window mean loss is at or below the threshold; None if never.
let stepsToThreshold (window: int) (threshold: float) (losses: float[]) =
    smoothed window losses |> Array.tryFindIndex (fun l -> l <= threshold) |> Option.map ((+) 1)

/// The first snapshot step at which some head's score reaches `level`; None if none does.
let firstStepAbove (level: float) (score: Snapshot -> HeadScoreTable) (snapshots: Snapshot list) =
    snapshots
    |> List.tryFind (fun snap -> let _, _, v = best (score snap) in v >= level)
    |> Option.map (fun snap -> snap.Step)
