/// The four models the expert analysis compares, built from one setup: the trained MoE decoder and
/// three baselines that could make the answer "no" — the same MoE untrained, an MoE trained with a
/// fixed random (hash) router, and a dense decoder with the same active parameters.
module MechInterp.Analysis.Experts.Subjects

open System
open TorchSharp
open MechInterp.Model
open MechInterp.Hooks
open MechInterp.Data
open MechInterp.Training

type Tensor = torch.Tensor

/// Sizes of one comparison. Expert d_mlp is per expert; the dense baseline gets k × that.
type Setup =
    { DModel: int
      Layers: int
      Heads: int
      Experts: int
      TopK: int
      ExpertDMlp: int
      SequenceLength: int
      Steps: int
      BatchSize: int
      LearningRate: float
      /// Sequences in the held-out analysis batch.
      AnalysisBatch: int
      /// Label shuffles per permutation test.
      Shuffles: int
      Seeds: int list }

type Kind =
    | Trained
    | Untrained
    | HashRouter
    | Dense

let kindName =
    function
    | Trained -> "trained"
    | Untrained -> "untrained"
    | HashRouter -> "hash_router"
    | Dense -> "dense"

/// What a routing decision is for a model: its router's top expert, or for the dense model the
/// neuron group (d_mlp split into n_experts contiguous groups) with the largest activation norm.
type Units =
    | Routed
    | NeuronGroups of groups: int

/// A model under analysis: the hooks it needs on every forward pass (the hash router's), and how to read its units.
type Subject =
    { Kind: Kind
      Seed: int
      Model: HookedTransformer
      /// tokens [batch, pos] → hooks to attach for that forward pass (none except for the hash router).
      HooksFor: Tensor -> Hook[]
      Units: Units }

let moeConfig (s: Setup) (vocab: int) (seed: int) =
    DecoderConfig(d_model = s.DModel, n_layers = s.Layers, n_heads = s.Heads, d_mlp = s.ExpertDMlp,
                  n_experts = s.Experts, experts_per_token = s.TopK, d_vocab = vocab, n_ctx = s.SequenceLength,
                  act_fn = "gelu", seed = seed)

/// Same attention and width; one MLP of k × expert d_mlp, so a token uses as many MLP parameters as in the MoE.
let denseConfig (s: Setup) (vocab: int) (seed: int) =
    DecoderConfig(d_model = s.DModel, n_layers = s.Layers, n_heads = s.Heads, d_mlp = s.TopK * s.ExpertDMlp,
                  d_vocab = vocab, n_ctx = s.SequenceLength, act_fn = "gelu", seed = seed)

/// A fixed random routing by token id, drawn once per layer from the seed: each token id gets k
/// distinct experts and gates 1/k each. It replaces hook_expert_index and hook_gates, so the router's
/// own choice is ignored and the experts learn whatever the hash sends them (Roller et al., 2021).
type HashRouting(config: DecoderConfig, seed: int) =
    let k = config.experts_per_token
    let tables =
        [| for layer in 0 .. config.n_layers - 1 ->
               let rng = Random(seed * 7_919 + layer)
               let ids =
                   Array.init config.d_vocab (fun _ ->
                       let order = Array.init config.n_experts id |> Array.sortBy (fun _ -> rng.Next())
                       Array.truncate k order |> Array.map int64)
               torch.tensor(Array.concat ids).view(int64 config.d_vocab, int64 k).DetachFromDisposeScope() |]

    /// The expert table of a layer: [d_vocab, k] int64.
    member _.Table(layer: int) = tables.[layer]

    /// Hooks forcing every MoE layer's routing for these tokens [batch, pos].
    member _.Hooks(tokens: Tensor) : Hook[] =
        let b, p = tokens.shape.[0], tokens.shape.[1]
        [| for layer in 0 .. config.n_layers - 1 do
               let table = tables.[layer]
               yield Hook($"blocks.{layer}.mlp.hook_expert_index",
                          HookFn(fun _ _ -> table.index_select(0L, tokens.reshape(-1L)).view(b, p, int64 k)))
               yield Hook($"blocks.{layer}.mlp.hook_gates",
                          HookFn(fun gates _ -> torch.full_like(gates, (1.0 / float k).ToScalar()))) |]

let private noHooks (_: Tensor) : Hook[] = [||]

let private trainingConfig (s: Setup) (seed: int) =
    TrainingConfig(Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, Seed = seed,
                   WarmupSteps = min 50 (s.Steps / 10), EvalEvery = 0, Progress = false)

/// Trains with the default loss (next-token cross-entropy plus router losses), or, when hooks are
/// given, with them attached and no router loss (a hash router has nothing to balance).
let train (s: Setup) (task: ITokenTask) (seed: int) (model: HookedTransformer) (hooksFor: (Tensor -> Hook[]) option) =
    let cfg = trainingConfig s seed
    match hooksFor with
    | None -> Trainer(model, task, cfg).Run()
    | Some hooks ->
        let loss (m: HookedTransformer) (batch: TokenBatch) =
            let logits = m.RunWithHooks(batch.Tokens, hooks batch.Tokens)
            Losses.Masked(logits, batch.Tokens, batch.LossMask)
        Trainer(model, task, cfg, Loss = Func<_, _, _>(loss)).Run()

/// Builds (and, except for the untrained one, trains) a subject; returns it with its final training loss (NaN if untrained).
let build (s: Setup) (task: ITokenTask) (kind: Kind) (seed: int) : Subject * float =
    let vocab = task.VocabSize
    match kind with
    | Untrained ->
        { Kind = kind; Seed = seed; Model = new HookedTransformer(moeConfig s vocab seed); HooksFor = noHooks; Units = Routed }, nan
    | Trained ->
        let model = new HookedTransformer(moeConfig s vocab seed)
        let result = train s task seed model None
        { Kind = kind; Seed = seed; Model = model; HooksFor = noHooks; Units = Routed }, result.FinalLoss
    | HashRouter ->
        let cfg = moeConfig s vocab seed
        let model = new HookedTransformer(cfg)
        let router = HashRouting(cfg, seed)
        let result = train s task seed model (Some router.Hooks)
        { Kind = kind; Seed = seed; Model = model; HooksFor = router.Hooks; Units = Routed }, result.FinalLoss
    | Dense ->
        let model = new HookedTransformer(denseConfig s vocab seed)
        let result = train s task seed model None
        { Kind = kind; Seed = seed; Model = model; HooksFor = noHooks; Units = NeuronGroups s.Experts }, result.FinalLoss
