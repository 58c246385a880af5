/// Reads each token's expert off a model on a labelled batch: one flat record per layer, every
/// token with its sequence, position, token id, ground-truth labels and chosen expert.
module MechInterp.Analysis.Experts.Routing

open TorchSharp
open MechInterp.Data
open MechInterp.Hooks
open MechInterp.Analysis.Experts.Subjects

/// Per-token routing of one layer over a batch, flattened in (sequence, position) order.
type RoutingSample =
    { Layer: int
      Experts: int
      /// The top expert (slot 0, the largest gate) of each token; for the dense model its strongest neuron group.
      Choice: int[]
      /// Every slot's expert, [tokens][k] (one entry for the dense model).
      Slots: int[][]
      Sequence: int[]
      Position: int[]
      Token: int[]
      Labels: Map<string, int[]>
      /// Mean entropy (nats) of the router's softmax per token; None where the router does not decide (hash, dense).
      RouterEntropy: float option }

let private flatInts (t: torch.Tensor) = t.reshape(-1L).to_type(torch.int64).data<int64>().ToArray() |> Array.map int

/// Labels [batch, pos] per feature, flattened.
let labelsOf (batch: TokenBatch) : Map<string, int[]> =
    batch.Labels |> Seq.map (fun kv -> kv.Key, flatInts kv.Value) |> Map.ofSeq

/// The routing of `layer` for a subject on a batch.
let collect (subject: Subject) (layer: int) (batch: TokenBatch) : RoutingSample =
    use _scope = torch.NewDisposeScope()
    use _noGrad = torch.no_grad()
    let b, p = int batch.Tokens.shape.[0], int batch.Tokens.shape.[1]
    let wanted =
        match subject.Units with
        | Routed -> set [ HookNames.ExpertIndices layer; HookNames.RouterLogits layer ]
        | NeuronGroups _ -> set [ HookNames.MlpPost layer ]
    let struct (_, cache) = subject.Model.RunWithCache(batch.Tokens, (fun n -> wanted.Contains n), subject.HooksFor batch.Tokens)
    use cache = cache
    let experts, slots, entropy =
        match subject.Units with
        | Routed ->
            let index = cache.[HookNames.ExpertIndices layer]                  // [batch, pos, k]
            let k = int index.shape.[2]
            let flat = flatInts index
            let slots = Array.init (b * p) (fun t -> Array.sub flat (t * k) k)
            let entropy =
                match subject.Kind with
                | HashRouter -> None
                | _ ->
                    let logp = cache.[HookNames.RouterLogits layer].log_softmax(-1L)   // [batch, pos, E]
                    Some(logp.exp().mul(logp).sum(-1L).neg().mean().item<float32>() |> float)
            subject.Model.Config.n_experts, slots, entropy
        | NeuronGroups groups ->
            let post = cache.[HookNames.MlpPost layer]                            // [batch, pos, d_mlp]
            let dMlp = post.shape.[2]
            if dMlp % int64 groups <> 0L then
                invalidArg (nameof subject) $"dense d_mlp ({dMlp}) must split into {groups} equal neuron groups"
            let strongest = post.view(int64 b, int64 p, int64 groups, dMlp / int64 groups).norm(-1).argmax(-1L)   // [batch, pos]
            groups, flatInts strongest |> Array.map (fun e -> [| e |]), None
    { Layer = layer
      Experts = experts
      Choice = slots |> Array.map (fun s -> s.[0])
      Slots = slots
      Sequence = Array.init (b * p) (fun t -> t / p)
      Position = Array.init (b * p) (fun t -> t % p)
      Token = flatInts batch.Tokens
      Labels = labelsOf batch
      RouterEntropy = entropy }

/// Routing statistics of one layer: load, router entropy, consecutive-token same-expert rate, and
/// per feature the contingency table with NMI and purity tested by label shuffles.
type LayerStatistics =
    { Layer: int
      Load: float[]
      /// Entropy (nats) of the load: log E when balanced.
      LoadEntropy: float
      RouterEntropy: float option
      ConsecutiveSame: float
      /// feature → counts [expert, category]
      Tables: Map<string, int[,]>
      Specialization: Map<string, Specialization.FeatureSpecialization> }

let statistics (rng: System.Random) (shuffles: int) (features: Map<string, string[]>) (sample: RoutingSample) =
    let load = Specialization.load sample.Experts sample.Choice
    let tables, tested =
        features
        |> Map.toList
        |> List.map (fun (name, categories) ->
            let labels = sample.Labels.[name]
            let table = Specialization.contingency sample.Experts categories.Length sample.Choice labels
            let s = Specialization.specialization rng shuffles sample.Experts categories.Length sample.Choice labels
            (name, table), (name, s))
        |> List.unzip
    { Layer = sample.Layer
      Load = load
      LoadEntropy = Specialization.entropy load
      RouterEntropy = sample.RouterEntropy
      ConsecutiveSame = Specialization.consecutiveSameRate sample.Choice sample.Sequence sample.Position
      Tables = Map.ofList tables
      Specialization = Map.ofList tested }
