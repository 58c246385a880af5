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
      /// The step cap; a batch stops earlier once every model in it has converged.
      Steps: int
      /// Held-out rule accuracies every this many steps; converged: learned, then the loss flat over ConvergenceWindow steps.
      EvalEvery: int
      ConvergenceWindow: int
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
/// distinct experts and gates 1/k each. It replaces hook_expert_weights (weight 1/k on the token's k experts,
/// 0 elsewhere) and hook_expert_indices (the table, in its order), so the router's own choice is ignored and the
/// experts learn whatever the hash sends them (Roller et al., 2021).
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

    /// The hashed experts of these tokens [batch, pos] at a layer: [batch, pos, k].
    member _.Experts(layer: int, tokens: Tensor) =
        tables.[layer].index_select(0L, tokens.reshape(-1L)).view(tokens.shape.[0], tokens.shape.[1], int64 k)

    /// Expert weights [batch, pos, n_experts] that put 1/k on each of the chosen experts [batch, pos, k].
    static member WeightsOf(experts: int, chosen: Tensor) =
        let k = chosen.shape.[2]
        torch.zeros(chosen.shape.[0], chosen.shape.[1], int64 experts)
            .scatter(-1L, chosen, torch.full(chosen.shape, (1.0 / float k).ToScalar()))

    /// Hooks forcing every MoE layer's routing for these tokens [batch, pos].
    member this.Hooks(tokens: Tensor) : Hook[] =
        [| for layer in 0 .. config.n_layers - 1 do
               yield Hook(HookNames.ExpertWeights layer,
                          HookFn(fun weights _ -> HashRouting.WeightsOf(config.n_experts, this.Experts(layer, tokens)).to_type(weights.dtype)))
               yield Hook(HookNames.ExpertIndices layer, HookFn(fun _ _ -> this.Experts(layer, tokens))) |]

let private noHooks (_: Tensor) : Hook[] = [||]

/// Learned: the top prediction right on at least 90% of every rule's positions (Rules) on the held-out batch;
/// converged: learned, then the held-out loss flat (2% + 0.005) over the window.
let criterion (s: Setup) =
    ConvergenceCriterion(Metric = "min_rule_accuracy", Threshold = 0.9, HigherIsBetter = true, Window = s.ConvergenceWindow,
                         RelativeTolerance = 0.02, AbsoluteTolerance = 0.005)

let private trainingConfig (s: Setup) (seed: int) =
    // A constant learning rate after warmup, so that the cap does not shape the trajectory.
    TrainingConfig(Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, MinLrRatio = 1.0, Seed = seed,
                   WarmupSteps = min 50 (s.Steps / 10), EvalEvery = s.EvalEvery, EvalBatchSize = 64, Progress = false,
                   Convergence = criterion s)

/// Held-out metrics of a (batched) model's logits: every rule's accuracy and their minimum.
let private ruleMetrics (logits: Tensor) (batch: TokenBatch) =
    let acc = Rules.accuracies logits batch
    readOnlyDict [ yield "min_rule_accuracy", Rules.minimumAccuracy acc
                   for KeyValue(name, v) in acc -> name, v ]

/// One trained model: its final training loss, whether and when it learned the rules and converged, and the step cap.
type Training = { TrainLoss: float; Convergence: ConvergenceRecord; StepsRun: int }

let private trainingOf (result: TrainingResult) (i: int) =
    // Trained with a criterion, so every run has its record.
    { TrainLoss = result.Runs.[i].FinalLoss; Convergence = nonNull result.Runs.[i].Convergence; StepsRun = result.StepsRun }

/// The trained subjects of every seed: the MoE and the hash-router MoE as one batched model (instance j the MoE of
/// seed j, instance n + j the hash router's), the dense models as another. The hash instances' routing is forced
/// by hooks and they get no router loss (a hash router has nothing to balance). `log` gets progress lines.
let trainAll (s: Setup) (task: ITokenTask) (log: string -> unit) =
    let seeds = Array.ofList s.Seeds
    let n = seeds.Length
    let vocab = task.VocabSize
    let moeCfg = moeConfig s vocab seeds.[0]
    let routers = seeds |> Array.map (fun seed -> HashRouting(moeConfig s vocab seed, seed))
    // Instances n .. 2n − 1 take their hash router's experts and gates 1/k; the trained ones keep their own.
    let hashHooks (tokens: Tensor) : Hook[] =
        let perInstance = tokens.dim() = 3L
        let hashed layer = torch.stack([| for j in 0 .. n - 1 -> routers.[j].Experts(layer, if perInstance then tokens.[int64 (n + j)] else tokens) |])   // [n, batch, pos, k]
        let keepTrained (mine: Tensor) (theirs: Tensor) = torch.cat([| mine.narrow(0L, 0L, int64 n); theirs |], 0L)
        [| for layer in 0 .. moeCfg.n_layers - 1 do
               yield Hook(HookNames.ExpertWeights layer, HookFn(fun weights _ ->
                   let forced = torch.stack([| for j in 0 .. n - 1 -> HashRouting.WeightsOf(moeCfg.n_experts, (hashed layer).[int64 j]) |])
                   keepTrained weights (forced.to_type(weights.dtype))))
               yield Hook(HookNames.ExpertIndices layer, HookFn(fun index _ -> keepTrained index (hashed layer))) |]
    let routerLossMask = torch.tensor(Array.init (2 * n) (fun i -> if i < n then 1.0f else 0.0f))
    let forwardHashed = Func<HookedTransformer, Tensor, Tensor>(fun m tokens -> m.RunWithHooks(tokens, hashHooks tokens))
    let progress name (steps: int) =
        Action<StepInfo>(fun info ->
            if info.Step % 250 = 0 || info.Step = steps then
                log (sprintf "  %s: step %d, mean training loss %.3f" name info.Step (Seq.average info.Losses)))
    log (sprintf "  training %d MoE and %d hash-router MoE models as one batch, at most %d steps" n n s.Steps)
    let moe = HookedTransformer.Batched(moeCfg, Array.append seeds seeds)
    let moeResult =
        Trainer(moe, task, [| for i in 0 .. 2 * n - 1 -> trainingConfig s seeds.[i % n] |],
                Forward = forwardHashed,
                Loss = Func<_, _, _>(fun (m: HookedTransformer) (batch: TokenBatch) ->
                    let logits = forwardHashed.Invoke(m, batch.Tokens)
                    Losses.Masked(logits, batch.Tokens, batch.LossMask).add((nonNull m.AuxiliaryLoss).mul(routerLossMask))),
                Metrics = Func<_, _, _>(fun (m: HookedTransformer) (batch: TokenBatch) -> ruleMetrics (forwardHashed.Invoke(m, batch.Tokens)) batch),
                OnStep = progress "MoE + hash router" s.Steps).Run()
    log (sprintf "  training %d dense models as one batch" n)
    let dense = HookedTransformer.Batched(denseConfig s vocab seeds.[0], seeds)
    let denseResult =
        Trainer(dense, task, [| for seed in seeds -> trainingConfig s seed |],
                Metrics = Func<_, _, _>(fun (m: HookedTransformer) (batch: TokenBatch) -> ruleMetrics (m.forward batch.Tokens) batch),
                OnStep = progress "dense" s.Steps).Run()
    let subjects =
        [ for j, seed in Array.indexed seeds ->
              seed,
              [ Trained, ({ Kind = Trained; Seed = seed; Model = moe.Instance j; HooksFor = noHooks; Units = Routed }, Some(trainingOf moeResult j))
                HashRouter, ({ Kind = HashRouter; Seed = seed; Model = moe.Instance(n + j); HooksFor = routers.[j].Hooks; Units = Routed },
                             Some(trainingOf moeResult (n + j)))
                Dense, ({ Kind = Dense; Seed = seed; Model = dense.Instance j; HooksFor = noHooks; Units = NeuronGroups s.Experts },
                        Some(trainingOf denseResult j))
                Untrained, ({ Kind = Untrained; Seed = seed; Model = new HookedTransformer(moeConfig s vocab seed); HooksFor = noHooks; Units = Routed }, None) ]
              |> Map.ofList ]
    moe.Dispose()
    dense.Dispose()
    routerLossMask.Dispose()
    subjects
