/// Trains one batched toy model per setting, instances for every feature density × replicate (independent
/// initialization and data), keeps the lowest-loss replicate per density as the paper does, and measures it.
module MechInterp.Analysis.Superposition.Sweep

open System
open MechInterp.ToyModels
open MechInterp.Training

/// Optimiser settings shared by every run of an experiment (the seed is per setting).
type Training =
    { /// The step cap; a batch stops earlier once every instance has converged.
      Steps: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      /// Converged: the mean loss (over 100-step windows) improved by at most 2% over this many steps, after learning.
      ConvergenceWindow: int
      /// A progress line every this many steps (0: none).
      LogEvery: int }

/// The paper notebook's optimiser: AdamW, lr 1e-3, PyTorch's default weight decay 0.01, 10,000 steps of 1,024.
let paperTraining =
    { Steps = 10_000; BatchSize = 1024; LearningRate = 1e-3; WeightDecay = 0.01; ConvergenceWindow = 2_000; LogEvery = 2_500 }

/// Learned: the loss at most 90% of that of the best model that represents no feature (W = 0, b = E[x]);
/// converged: learned, then flat (2% over the window). Losses of sparse features are small, so no absolute slack.
let criterion (training: Training) =
    ConvergenceCriterion(Metric = "loss_ratio", Threshold = 0.9, Window = training.ConvergenceWindow,
                         RelativeTolerance = 0.02, AbsoluteTolerance = 0.0)

/// The Core trainer's settings for one seed, sending progress lines to `log`.
let coreSettings (training: Training) (seed: int64) (log: string -> unit) =
    ToyTrainingSettings(
        Steps = training.Steps, BatchSize = training.BatchSize, LearningRate = training.LearningRate,
        WeightDecay = training.WeightDecay, Seed = seed, LogEvery = training.LogEvery, Log = Action<string> log,
        Convergence = criterion training)

/// n features into m dimensions with importance I_i = decay^i, one instance per density 1 − S and replicate.
type SweepSetting =
    { Name: string
      Features: int
      Hidden: int
      ImportanceDecay: float
      Activation: ToyActivation
      Densities: float list
      /// Independent runs per density; the lowest-loss one is kept (the paper keeps the best of several).
      Replicates: int
      Seed: int64
      Training: Training }

/// One trained instance (the kept replicate of its density), measured.
type SweepPoint =
    { Density: float
      /// W [m, n] after training.
      W: float[,]
      FeatureNorms: float[]
      Superposition: float[]
      DimsPerFeature: float
      FeatureDimensionality: float[]
      Represented: int
      Loss: float
      /// Which replicate was kept, every replicate's loss, and the kept one's learned / converged steps.
      Replicate: int
      ReplicateLosses: float[]
      Convergence: ConvergenceRecord
      /// How many of the density's replicates converged, and how many features each replicate represents.
      ConvergedReplicates: int
      ReplicateRepresented: int[] }

type SweepResult =
    { Setting: SweepSetting
      Points: SweepPoint list
      StepsRun: int
      Seconds: float }

/// I_i = decay^i for i = 0 .. n−1 (feature 0 most important when decay < 1).
let importance (decay: float) (n: int) = Array.init n (fun i -> decay ** float i)

/// Errors name the setting and the bad value; m > n is caught by the Core config with its own message.
let validate (s: SweepSetting) =
    if s.Densities.IsEmpty then invalidArg (nameof s) $"setting '{s.Name}' has zero instances: give at least one density 1 − S"
    for d in s.Densities do
        if not (d >= 0.0 && d <= 1.0) then
            invalidArg (nameof s) $"setting '{s.Name}': density 1 − S = {d} puts the sparsity S = {1.0 - d} outside [0, 1]"
    if s.Replicates < 1 then invalidArg (nameof s) $"setting '{s.Name}': replicates must be at least 1, got {s.Replicates}"
    if not (s.ImportanceDecay > 0.0 && Double.IsFinite s.ImportanceDecay) then
        invalidArg (nameof s) $"setting '{s.Name}': importance decay must be positive and finite, got {s.ImportanceDecay}"
    ToyModelConfig(s.Features, s.Hidden, s.Densities.Length * s.Replicates, s.Activation).Validate()

/// The metrics of one embedding.
let measure (density: float) (loss: float) (w: float[,]) =
    { Density = density
      W = w
      FeatureNorms = Metrics.featureNorms w
      Superposition = Metrics.superposition w
      DimsPerFeature = Metrics.dimsPerFeature w
      FeatureDimensionality = Metrics.featureDimensionality w
      Represented = Metrics.represented w
      Loss = loss
      Replicate = 0
      ReplicateLosses = [| loss |]
      Convergence = ConvergenceRecord(Nullable(), Nullable())
      ConvergedReplicates = 0
      ReplicateRepresented = [| Metrics.represented w |] }

/// Trains all densities × replicates of a setting as one batched model (instance k·R + r is density k,
/// replicate r) and measures the kept replicate of every density.
let run (log: string -> unit) (s: SweepSetting) : SweepResult =
    validate s
    let densities = Array.ofList s.Densities
    let r = s.Replicates
    let instances = densities.Length * r
    let config = ToyModelConfig(s.Features, s.Hidden, instances, s.Activation)
    let rows = Array.create instances (importance s.ImportanceDecay s.Features)
    let sparsity = Array.init instances (fun k -> 1.0 - densities.[k / r])
    let prefix = $"  {s.Name}: "
    let result = ToyTrainer.Train(config, rows, sparsity, coreSettings s.Training s.Seed (fun line -> log (prefix + line)))
    use model = result.Model
    let convergence = result.Convergence |> Option.ofObj |> Option.map Array.ofSeq
    let points =
        densities
        |> Array.mapi (fun k d ->
            let losses = Array.init r (fun j -> result.FinalLoss.[k * r + j])
            let best = Array.findIndex (fun l -> l = Array.min losses) losses
            let kept = k * r + best
            let record = convergence |> Option.map (fun c -> c.[kept]) |> Option.defaultValue (ConvergenceRecord(Nullable(), Nullable()))
            let converged = convergence |> Option.map (fun c -> Array.sub c (k * r) r |> Array.filter (fun x -> x.Converged) |> Array.length) |> Option.defaultValue 0
            let represented = Array.init r (fun j -> model.EmbeddingOf(k * r + j) |> Metrics.ofRows |> Metrics.represented)
            { measure d losses.[best] (model.EmbeddingOf kept |> Metrics.ofRows) with
                Replicate = best; ReplicateLosses = losses; Convergence = record; ConvergedReplicates = converged
                ReplicateRepresented = represented })
        |> List.ofArray
    { Setting = s; Points = points; StepsRun = result.StepsRun; Seconds = result.Elapsed.TotalSeconds }
