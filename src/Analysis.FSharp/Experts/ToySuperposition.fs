/// Mixture of experts in the toy model of superposition: E experts of width m, a top-1 router,
/// against the dense toy model of width m · E. How many features does each expert represent, how
/// superposed are they inside it, and does each feature live in one expert (monosemantic experts)?
module MechInterp.Analysis.Experts.ToySuperposition

open MechInterp.ToyModels
open MechInterp.Analysis.Superposition

/// A feature counts as represented when its direction is longer than this (Elhage et al.'s cut-off).
let representedThreshold = Metrics.representedThreshold

type ToySetup =
    { Features: int
      /// Width of one expert; the dense model gets Hidden · Experts.
      Hidden: int
      Experts: int
      Sparsity: float
      /// Importance of feature i is ImportanceDecay^i.
      ImportanceDecay: float
      Steps: int
      BatchSize: int
      LearningRate: float
      BalanceCoef: float }

/// ‖W_i‖ per feature of an embedding given as rows [m][n].
let norms (w: float[][]) = Metrics.featureNorms (Metrics.ofRows w)

/// D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²: 1 for a feature with a dimension to itself, 1/2 for an antipodal pair, 0 if unrepresented.
let dimensionality (w: float[][]) = Metrics.featureDimensionality (Metrics.ofRows w)

/// What one seed of the comparison found.
type ToyComparison =
    { Seed: int
      MoeLoss: float
      DenseLoss: float
      /// Features with ‖W_e,i‖ > 0.5, per expert.
      RepresentedPerExpert: int[]
      /// Features represented by at least one expert.
      MoeRepresented: int
      DenseRepresented: int
      /// Represented features per hidden dimension: inside an expert (mean over experts) and in the dense model.
      MoeFeaturesPerDimension: float
      DenseFeaturesPerDimension: float
      /// Mean dimensionality D_i of represented features inside their expert, and in the dense model.
      MoeMeanDimensionality: float
      DenseMeanDimensionality: float
      /// Mean over features represented anywhere of max_e ‖W_e,i‖² / Σ_e ‖W_e,i‖²: 1 when each lives in one expert.
      Exclusivity: float
      /// Features the router sends (as a lone input e_i) to each expert.
      RoutedPerExpert: int[]
      /// Share of represented features whose router expert is the expert with the longest W_e,i.
      RouterAgreesWithEmbedding: float }

let private meanOr0 (xs: float[]) = if xs.Length = 0 then 0.0 else Array.average xs

/// Trains the MoE and the dense toy model from one seed and measures both.
let compare (s: ToySetup) (seed: int) : ToyComparison =
    let importance = Array.init s.Features (fun i -> s.ImportanceDecay ** float i)
    use moe = new ExpertToyModel(s.Features, s.Hidden, s.Experts, int64 seed)
    let moeLoss = moe.Train(importance, s.Sparsity, s.Steps, s.BatchSize, s.LearningRate, s.BalanceCoef, int64 (seed + 1))
    // The dense baseline is the superposition study's own ToyModel, trained the same way (no weight decay on either).
    let denseConfig = ToyModelConfig(s.Features, s.Hidden * s.Experts, 1, ToyActivation.Relu)
    let settings = ToyTrainingSettings(Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, WeightDecay = 0.0, Seed = int64 seed)
    let trained = ToyTrainer.Train(denseConfig, [| importance |], [| s.Sparsity |], settings)
    use dense = trained.Model
    let denseLoss = trained.FinalLoss.[0]
    let experts = Array.init s.Experts moe.EmbeddingOf
    let expertNorms = experts |> Array.map norms                                 // [E][n]
    let represented = expertNorms |> Array.map (Array.filter (fun x -> x > representedThreshold) >> Array.length)
    let anywhere = Array.init s.Features (fun i -> expertNorms |> Array.exists (fun ns -> ns.[i] > representedThreshold))
    let denseW = dense.EmbeddingOf 0
    let denseNorms = norms denseW
    let denseRepresented = denseNorms |> Array.filter (fun x -> x > representedThreshold) |> Array.length
    let moeDims =
        experts |> Array.mapi (fun e w ->
            let d = dimensionality w
            Array.init s.Features id |> Array.filter (fun i -> expertNorms.[e].[i] > representedThreshold) |> Array.map (fun i -> d.[i]))
        |> Array.concat
    let denseDims =
        let d = dimensionality denseW
        Array.init s.Features id |> Array.filter (fun i -> denseNorms.[i] > representedThreshold) |> Array.map (fun i -> d.[i])
    let strongest i = Array.init s.Experts id |> Array.maxBy (fun e -> expertNorms.[e].[i])
    let exclusivity =
        [| for i in 0 .. s.Features - 1 do
               if anywhere.[i] then
                   let sq = expertNorms |> Array.map (fun ns -> ns.[i] * ns.[i])
                   yield Array.max sq / Array.sum sq |]
    let routed =
        use _scope = TorchSharp.torch.NewDisposeScope()
        use eye = TorchSharp.torch.eye(int64 s.Features)
        moe.Route(eye).data<int64>().ToArray() |> Array.map int
    let agrees =
        [| for i in 0 .. s.Features - 1 do
               if anywhere.[i] then yield (if routed.[i] = strongest i then 1.0 else 0.0) |]
    { Seed = seed
      MoeLoss = moeLoss
      DenseLoss = denseLoss
      RepresentedPerExpert = represented
      MoeRepresented = anywhere |> Array.filter id |> Array.length
      DenseRepresented = denseRepresented
      MoeFeaturesPerDimension = represented |> Array.averageBy (fun r -> float r / float s.Hidden)
      DenseFeaturesPerDimension = float denseRepresented / float (s.Hidden * s.Experts)
      MoeMeanDimensionality = meanOr0 moeDims
      DenseMeanDimensionality = meanOr0 denseDims
      Exclusivity = meanOr0 exclusivity
      RoutedPerExpert = Array.init s.Experts (fun e -> routed |> Array.filter ((=) e) |> Array.length)
      RouterAgreesWithEmbedding = meanOr0 agrees }
