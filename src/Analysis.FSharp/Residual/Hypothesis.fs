/// The claim the project started from, tested against its alternative: in a residual decoder every layer
/// edits one shared stream (so each layer is locally interpretable in one space), whereas in a plain decoder,
/// whose sublayers replace the stream, every layer re-encodes into a space of its own. Residual and plain
/// arms of the same width and parameter count train at several depths on two tasks, several seeds each as
/// one batched model, and are measured by optimization, logit and tuned lens, layer deletion and swaps,
/// CKA between layers and the relative size of each layer's edit.
module MechInterp.Analysis.Residual.Hypothesis

open System
open TorchSharp
open MechInterp.Model
open MechInterp.Data
open MechInterp.Training
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Residual.Lens

type Tensor = torch.Tensor

type Arm =
    | Residual
    | Plain

let armName = function Residual -> "residual" | Plain -> "plain"

type TaskKind =
    /// Repeated random segments: only an induction circuit predicts the second copy (attention-only models).
    | Induction
    /// The toy language (agreement, counting, end of sentence) with MLP blocks.
    | Language

let taskName = function Induction -> "induction" | Language -> "toy_language"

/// How one task trains: the step cap, batch, learning rate, and how learned and converged are judged.
type TaskSetup =
    { Steps: int
      BatchSize: int
      LearningRate: float
      EvalEvery: int
      ConvergenceWindow: int }

type Settings =
    { DModel: int
      Heads: int
      Depths: int list
      Seeds: int list
      Tasks: TaskKind list
      Induction: TaskSetup
      Language: TaskSetup
      /// Induction task sizes: vocabulary and segment lengths.
      InductionVocab: int
      MaxRepeat: int
      MinRepeat: int
      LanguageLength: int
      /// Sequences per seed in the held-out batch the lens is fitted on, and in the one every measure is taken on.
      LensBatch: int
      AnalysisBatch: int
      LensFit: TunedLens.Fit }

let taskSetup (s: Settings) = function Induction -> s.Induction | Language -> s.Language

let private tokenTask (s: Settings) = function
    | Induction -> InductionTask(s.InductionVocab, s.MaxRepeat, s.MinRepeat) :> ITokenTask
    | Language -> ToyLanguage(s.LanguageLength) :> ITokenTask

/// The two arms differ only in `residual`: same width, heads and parameters.
let config (s: Settings) (task: TaskKind) (depth: int) (arm: Arm) (seed: int) =
    let t = tokenTask s task
    let attnOnly = (task = Induction)
    DecoderConfig(d_model = s.DModel, n_layers = depth, n_heads = s.Heads, d_vocab = t.VocabSize, n_ctx = t.SequenceLength,
                  attn_only = attnOnly, d_mlp = (if attnOnly then 0 else 4 * s.DModel), act_fn = "gelu",
                  positional_embedding_type = (if attnOnly then "rotary" else "standard"),
                  residual = (arm = Residual), seed = seed)

/// Learned means the task is solved: for induction a held-out repeat loss at most 1 nat; for the toy language
/// every rule's top prediction right on at least 90% of its positions. Converged: learned, then flat.
let criterion (s: Settings) (task: TaskKind) =
    let setup = taskSetup s task
    match task with
    | Induction ->
        ConvergenceCriterion(Metric = "repeat_loss", Threshold = 1.0, Window = setup.ConvergenceWindow,
                             RelativeTolerance = 0.02, AbsoluteTolerance = 0.005)
    | Language ->
        ConvergenceCriterion(Metric = "min_rule_accuracy", Threshold = 0.9, HigherIsBetter = true, Window = setup.ConvergenceWindow,
                             RelativeTolerance = 0.02, AbsoluteTolerance = 0.005)

let learnedText = function
    | Induction -> "held-out repeat loss ≤ 1 nat"
    | Language -> "every rule's top-1 accuracy ≥ 0.9 on held-out text"

let private metrics (task: TaskKind) =
    Func<HookedTransformer, TokenBatch, Collections.Generic.IReadOnlyDictionary<string, Tensor>>(fun m batch ->
        let logits = m.forward batch.Tokens
        match task with
        | Induction -> readOnlyDict [ "repeat_loss", Losses.Masked(logits, batch.Tokens, InductionTask.RepeatMask batch) ]
        | Language ->
            let acc = MechInterp.Analysis.Experts.Rules.accuracies logits batch
            readOnlyDict [ "min_rule_accuracy", MechInterp.Analysis.Experts.Rules.minimumAccuracy acc ])

/// Held-out batches per seed, from seeds the training stream never uses: one to fit lenses on, one to measure on.
let private heldOut (s: Settings) (task: TaskKind) (salt: int) (size: int) =
    let t = tokenTask s task
    TokenBatch.Stack([| for seed in s.Seeds -> t.Sample(size, Random(salt + 7_919 * seed)) |])

/// One run of an arm: its seed, when it learned and converged, and its measures on the held-out batch.
type Run =
    { Seed: int
      Convergence: ConvergenceRecord
      /// Held-out loss of the whole model (the task's loss mask).
      FinalLoss: float
      /// Held-out top-1 accuracy on the loss mask.
      Accuracy: float
      /// Per stream after 0 .. depth blocks: next-token loss read out untranslated (logit lens) and through the tuned lens.
      LogitLensLoss: float[]
      TunedLensLoss: float[]
      /// Per stream: KL from the model's output to the logit lens and to the tuned lens (0 at the last).
      LogitLensKl: float[]
      TunedLensKl: float[]
      /// Loss increase when block l is left out (per l), and when blocks l and l + 1 swap (per l < depth − 1).
      DeletionIncrease: float[]
      SwapIncrease: float[]
      /// Top-1 accuracy kept (intervened / clean) under each deletion and swap.
      DeletionAccuracyKept: float[]
      SwapAccuracyKept: float[]
      /// Linear CKA between the streams after i and j blocks, [depth + 1, depth + 1].
      Cka: float[,]
      /// Per block: mean over tokens of ‖resid_post − resid_pre‖ / ‖resid_pre‖.
      EditSize: float[] }

type ArmResult =
    { Task: TaskKind
      Depth: int
      Arm: Arm
      Runs: Run list
      /// Steps the batch ran (the cap, or fewer when every run converged first) and its wall time.
      StepsRun: int
      Seconds: float }

let learnedRuns (a: ArmResult) = a.Runs |> List.filter (fun r -> r.Convergence.Learned)
let convergedRuns (a: ArmResult) = a.Runs |> List.filter (fun r -> r.Convergence.Converged)

let private toArray (t: Tensor) = t.to_type(torch.float64).reshape(-1L).data<float>().ToArray()

/// Every measure of a trained batched model (one instance per seed) on the held-out batches.
let private measure (s: Settings) (task: TaskKind) (model: HookedTransformer) (lensBatch: TokenBatch) (batch: TokenBatch) =
    use _scope = torch.NewDisposeScope()
    let depth = model.Config.n_layers
    let names = streamNames model |> Set.ofList
    let record (b: TokenBatch) =
        use _ = torch.no_grad()
        let struct (logits, cache) = model.RunWithCache(b.Tokens, Func<string, bool>(names.Contains))
        use cache = cache
        logits, streams model cache                                           // [instance, ..], [depth + 1, instance, batch, pos, d]
    let _, lensStreams = record lensBatch
    let logits, evalStreams = record batch
    use lens = TunedLens.train model s.LensFit lensStreams
    use _ = torch.no_grad()
    let lossOf (l: Tensor) = toArray (Losses.Masked(l, batch.Tokens, batch.LossMask))   // [instance]
    let accuracyOf (l: Tensor) =
        let pos = l.shape.[2]
        let right = l.narrow(2L, 0L, pos - 1L).argmax(-1L).eq(batch.Tokens.narrow(2L, 1L, pos - 1L))
        toArray (maskedMean (right.to_type(torch.float32)) batch.LossMask)
    let perLayer (layerLogits: Tensor) = [| for l in 0 .. depth -> lossOf layerLogits.[int64 l] |]   // [layer][instance]
    let logitLayers = TunedLens.logitLens model evalStreams
    let tunedLayers = TunedLens.logits model lens evalStreams
    let logitLoss, tunedLoss = perLayer logitLayers, perLayer tunedLayers
    let logitKl = (TunedLens.klByLayer logitLayers).to_type(torch.float64)      // [layer, instance]
    let tunedKl = (TunedLens.klByLayer tunedLayers).to_type(torch.float64)
    let clean, cleanAccuracy = lossOf logits, accuracyOf logits
    let surgery (order: int list) =
        let l = model.ForwardThroughBlocks(batch.Tokens, Collections.Generic.List<int>(order))
        Array.map2 (-) (lossOf l) clean, Array.map2 (fun a c -> if c > 0.0 then a / c else nan) (accuracyOf l) cleanAccuracy
    let deletions = [| for l in 0 .. depth - 1 -> surgery [ for k in 0 .. depth - 1 do if k <> l then k ] |]
    let swaps =
        [| for l in 0 .. depth - 2 ->
               surgery [ for k in 0 .. depth - 1 -> if k = l then l + 1 elif k = l + 1 then l else k ] |]
    let instances = clean.Length
    let d = int64 model.Config.d_model
    let cka i =
        let flat l = evalStreams.[int64 l, int64 i].reshape(-1L, d)
        Array2D.init (depth + 1) (depth + 1) (fun a b -> if a = b then 1.0 else Cka.linear (flat a) (flat b))
    let edits =
        [| for l in 0 .. depth - 1 ->
               let pre, post = evalStreams.[int64 l], evalStreams.[int64 (l + 1)]
               let ratio = (post - pre).norm(-1) / pre.norm(-1).clamp_min(TorchSharp.Scalar.op_Implicit 1e-12)
               toArray (ratio.mean([| 1L; 2L |])) |]                                       // [instance]
    let column (rows: float[][]) i = rows |> Array.map (fun r -> r.[i])
    [ for i in 0 .. instances - 1 ->
          {| FinalLoss = clean.[i]
             Accuracy = cleanAccuracy.[i]
             LogitLensLoss = column logitLoss i
             TunedLensLoss = column tunedLoss i
             LogitLensKl = toArray (logitKl.select(1L, int64 i))
             TunedLensKl = toArray (tunedKl.select(1L, int64 i))
             DeletionIncrease = deletions |> Array.map (fun (inc, _) -> inc.[i])
             DeletionAccuracyKept = deletions |> Array.map (fun (_, kept) -> kept.[i])
             SwapIncrease = swaps |> Array.map (fun (inc, _) -> inc.[i])
             SwapAccuracyKept = swaps |> Array.map (fun (_, kept) -> kept.[i])
             Cka = cka i
             EditSize = column edits i |} ]

/// Trains one arm at one depth on one task, every seed as an instance of one batched model, under the task's
/// step cap (stopping early once every run has converged), then measures it. Returns the result and the model.
let trainArm (s: Settings) (task: TaskKind) (depth: int) (arm: Arm) (log: string -> unit) =
    let setup = taskSetup s task
    let seeds = Array.ofList s.Seeds
    let model = HookedTransformer.Batched(config s task depth arm seeds.[0], seeds)
    let configs =
        [| for seed in seeds ->
               // A constant learning rate after warmup, so that the cap does not shape the trajectory.
               TrainingConfig(Steps = setup.Steps, BatchSize = setup.BatchSize, LearningRate = setup.LearningRate, MinLrRatio = 1.0,
                              Seed = seed, WarmupSteps = min 50 (setup.Steps / 10), EvalEvery = setup.EvalEvery, EvalBatchSize = 32,
                              Progress = false, Convergence = criterion s task, StopWhenConverged = true) |]
    let progress =
        Action<StepInfo>(fun info ->
            if info.Step % 500 = 0 then
                log (sprintf "    step %d/%d: mean training loss %.3f" info.Step setup.Steps (Seq.average info.Losses)))
    let clock = Diagnostics.Stopwatch.StartNew()
    // One thread: five d_model-32 decoders are too small for intra-op threads to pay, and where another process
    // holds a core, two-thread barriers made these steps 3–8× slower (measured here).
    let result = MechInterp.Analysis.Residual.InductionRun.onOneThread (fun () ->
        Trainer(model, tokenTask s task, configs, Metrics = metrics task, OnStep = progress).Run())
    use lensBatch = heldOut s task 1_000_003 s.LensBatch
    use batch = heldOut s task 2_000_003 s.AnalysisBatch
    let measures = MechInterp.Analysis.Residual.InductionRun.onOneThread (fun () -> measure s task model lensBatch batch)
    let runs =
        [ for i, m in List.indexed measures ->
              { Seed = seeds.[i]
                Convergence = nonNull result.Runs.[i].Convergence   // trained with a criterion
                FinalLoss = m.FinalLoss; Accuracy = m.Accuracy
                LogitLensLoss = m.LogitLensLoss; TunedLensLoss = m.TunedLensLoss
                LogitLensKl = m.LogitLensKl; TunedLensKl = m.TunedLensKl
                DeletionIncrease = m.DeletionIncrease; SwapIncrease = m.SwapIncrease
                DeletionAccuracyKept = m.DeletionAccuracyKept; SwapAccuracyKept = m.SwapAccuracyKept
                Cka = m.Cka; EditSize = m.EditSize } ]
    let learned = runs |> List.filter (fun r -> r.Convergence.Learned) |> List.length
    let converged = runs |> List.filter (fun r -> r.Convergence.Converged) |> List.length
    log (sprintf "  %s, depth %d, %s: %d/%d learned, %d converged, %d steps, %.0f s"
             (taskName task) depth (armName arm) learned runs.Length converged result.StepsRun clock.Elapsed.TotalSeconds)
    { Task = task; Depth = depth; Arm = arm; Runs = runs; StepsRun = result.StepsRun; Seconds = clock.Elapsed.TotalSeconds }, model

let checkpointName (task: TaskKind) (arm: Arm) (depth: int) = $"residual_hypothesis-{taskName task}-{armName arm}-depth{depth}.safetensors"

/// Trains and measures one arm at one depth on one task (one batched model of every seed); saves seed 0 to
/// `checkpointDir` when the depth is the largest, named by task, arm and depth.
let runArm (s: Settings) (log: string -> unit) (checkpointDir: string option) (task: TaskKind) (depth: int) (arm: Arm) =
    let result, model = trainArm s task depth arm log
    use model = model
    match checkpointDir with
    | Some dir when depth = List.max s.Depths ->
        IO.Directory.CreateDirectory dir |> ignore
        use seed0 = model.Instance 0
        seed0.Save(IO.Path.Combine(dir, checkpointName task arm depth))
    | _ -> ()
    result

/// Every (task, depth, arm) of the comparison, in the order the results list them.
let cellsOf (s: Settings) =
    [ for task in s.Tasks do
          for depth in s.Depths do
              for arm in [ Residual; Plain ] -> task, depth, arm ]

/// The whole comparison: every task, depth and arm. `checkpointDir` receives seed 0 of each arm at the largest
/// depth of each task, named by task, arm and depth.
let run (s: Settings) (log: string -> unit) (checkpointDir: string option) =
    [ for task, depth, arm in cellsOf s -> runArm s log checkpointDir task depth arm ]
