/// Trains one batched toy model per setting, an instance per feature density, and measures each instance.
module MechInterp.Analysis.Superposition.Sweep

open System
open MechInterp.ToyModels

/// Optimiser settings shared by every run of an experiment (the seed is per setting).
type Training =
    { Steps: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      /// A progress line every this many steps (0: none).
      LogEvery: int }

/// The paper notebook's optimiser: AdamW, lr 1e-3, PyTorch's default weight decay 0.01, 10,000 steps of 1,024.
let paperTraining =
    { Steps = 10_000; BatchSize = 1024; LearningRate = 1e-3; WeightDecay = 0.01; LogEvery = 2_500 }

/// The Core trainer's settings for one seed, sending progress lines to `log`.
let coreSettings (training: Training) (seed: int64) (log: string -> unit) =
    ToyTrainingSettings(
        Steps = training.Steps, BatchSize = training.BatchSize, LearningRate = training.LearningRate,
        WeightDecay = training.WeightDecay, Seed = seed, LogEvery = training.LogEvery, Log = Action<string> log)

/// n features into m dimensions with importance I_i = decay^i, one instance per density 1 − S.
type SweepSetting =
    { Name: string
      Features: int
      Hidden: int
      ImportanceDecay: float
      Activation: ToyActivation
      Densities: float list
      Seed: int64
      Training: Training }

/// One trained instance, measured.
type SweepPoint =
    { Density: float
      /// W [m, n] after training.
      W: float[,]
      FeatureNorms: float[]
      Superposition: float[]
      DimsPerFeature: float
      FeatureDimensionality: float[]
      Represented: int
      Loss: float }

type SweepResult =
    { Setting: SweepSetting
      Points: SweepPoint list
      Seconds: float }

/// I_i = decay^i for i = 0 .. n−1 (feature 0 most important when decay < 1).
let importance (decay: float) (n: int) = Array.init n (fun i -> decay ** float i)

/// Errors name the setting and the bad value; m > n is caught by the Core config with its own message.
let validate (s: SweepSetting) =
    if s.Densities.IsEmpty then invalidArg (nameof s) $"setting '{s.Name}' has zero instances: give at least one density 1 − S"
    for d in s.Densities do
        if not (d >= 0.0 && d <= 1.0) then
            invalidArg (nameof s) $"setting '{s.Name}': density 1 − S = {d} puts the sparsity S = {1.0 - d} outside [0, 1]"
    if not (s.ImportanceDecay > 0.0 && Double.IsFinite s.ImportanceDecay) then
        invalidArg (nameof s) $"setting '{s.Name}': importance decay must be positive and finite, got {s.ImportanceDecay}"
    ToyModelConfig(s.Features, s.Hidden, s.Densities.Length, s.Activation).Validate()

/// The metrics of one embedding.
let measure (density: float) (loss: float) (w: float[,]) =
    { Density = density
      W = w
      FeatureNorms = Metrics.featureNorms w
      Superposition = Metrics.superposition w
      DimsPerFeature = Metrics.dimsPerFeature w
      FeatureDimensionality = Metrics.featureDimensionality w
      Represented = Metrics.represented w
      Loss = loss }

/// Trains all densities of a setting as one batched model and measures every instance.
let run (log: string -> unit) (s: SweepSetting) : SweepResult =
    validate s
    let densities = Array.ofList s.Densities
    let config = ToyModelConfig(s.Features, s.Hidden, densities.Length, s.Activation)
    let rows = Array.create densities.Length (importance s.ImportanceDecay s.Features)
    let sparsity = densities |> Array.map (fun d -> 1.0 - d)
    let prefix = $"  {s.Name}: "
    let result = ToyTrainer.Train(config, rows, sparsity, coreSettings s.Training s.Seed (fun line -> log (prefix + line)))
    use model = result.Model
    let points =
        densities
        |> Array.mapi (fun k d -> model.EmbeddingOf k |> Metrics.ofRows |> measure d result.FinalLoss.[k])
        |> List.ofArray
    { Setting = s; Points = points; Seconds = result.Elapsed.TotalSeconds }
