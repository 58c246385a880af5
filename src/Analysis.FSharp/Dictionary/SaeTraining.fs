/// Trains an SAE as Anthropic's April 2024 update and Gao et al. do: inputs scaled so that E‖x‖ = √d_in (folded
/// back into the weights at the end), Adam with linear warm-up and a decay to zero over the last fifth, the
/// sparsity coefficient warmed up, gradients clipped at norm 1, unit-norm decoder rows where the architecture
/// keeps them, and the aux-k loss (Gao et al.) that gives latents silent for `DeadWindow` steps a gradient again.
module MechInterp.Analysis.Dictionary.SaeTraining

open System
open System.Diagnostics
open TorchSharp

type Tensor = torch.Tensor

type TrainSettings =
    { Steps: int
      BatchSize: int
      LearningRate: float
      /// Fraction of steps with a linear learning-rate warm-up, and the final fraction decaying it to zero.
      WarmupFraction: float
      DecayFraction: float
      /// λ: the L1 coefficient (standard) or the L0 coefficient (JumpReLU); unused by TopK and BatchTopK.
      SparsityCoefficient: float
      /// Fraction of steps over which λ rises linearly from 0.
      SparsityWarmupFraction: float
      /// JumpReLU's straight-through bandwidth ε and starting threshold, in the scaled inputs' units.
      Bandwidth: float
      InitialThreshold: float
      /// A latent that has not fired for this many steps counts as dead and gets the aux-k loss.
      DeadWindow: int
      /// Latents the aux-k loss may use (Gao et al.: d_in / 2), and its weight (1/32).
      AuxK: int
      AuxCoefficient: float
      Seed: int64
      LogEvery: int }

/// Defaults that train every architecture on the three benchmarks here.
let defaults =
    { Steps = 2000; BatchSize = 1024; LearningRate = 1e-3; WarmupFraction = 0.05; DecayFraction = 0.2
      SparsityCoefficient = 1.0; SparsityWarmupFraction = 0.05; Bandwidth = 0.5; InitialThreshold = 1.0
      DeadWindow = 200; AuxK = 0; AuxCoefficient = 1.0 / 32.0; Seed = 0L; LogEvery = 500 }

/// One logged step: reconstruction error and sparsity on that step's batch, in the scaled units.
type LogPoint = { Step: int; Mse: float; L0: float; Dead: int }

type Trained =
    { Sae: Sae
      /// The training scale s (the SAE saw s · x; folded into the weights since).
      Scale: float
      Log: LogPoint list
      /// Latents that had not fired for DeadWindow steps when training ended.
      DeadAtEnd: int
      Seconds: float
      Samples: int64 }

let private learningRateAt (s: TrainSettings) (step: int) =
    let warm = max 1 (int (s.WarmupFraction * float s.Steps))
    let decayFrom = s.Steps - int (s.DecayFraction * float s.Steps)
    if step < warm then s.LearningRate * float (step + 1) / float warm
    elif step >= decayFrom && s.Steps > decayFrom then s.LearningRate * float (s.Steps - step) / float (s.Steps - decayFrom)
    else s.LearningRate

/// The scale that makes E‖s·x‖ = √d_in, from a few batches (SAELens's "expected_average_only_in").
let inputScale (next: int -> Tensor) (batchSize: int) (dIn: int) =
    use _scope = torch.NewDisposeScope()
    let norms = [ for _ in 1 .. 4 -> (next batchSize).norm(1, false).mean().item<float32>() |> float ]
    let mean = List.average norms
    if not (Double.IsFinite mean) || mean <= 0.0 then
        invalidArg (nameof next) $"the activations have mean norm {mean}; an SAE needs finite, non-zero inputs"
    sqrt (float dIn) / mean

/// Trains an SAE of `config` on batches from `next` (a batch size → [batch, d_in] float32, fresh or from an
/// activation store). `log` gets a line every LogEvery steps.
let train (log: string -> unit) (settings: TrainSettings) (config: SaeConfig) (next: int -> Tensor) : Trained =
    SaeConfig.validate config
    if settings.Steps < 1 || settings.BatchSize < 1 then
        invalidArg (nameof settings) $"steps ({settings.Steps}) and batch size ({settings.BatchSize}) must be at least 1"
    let clock = Stopwatch.StartNew()
    let draw size =
        let x = next size
        if x.dim() <> 2L || x.shape.[1] <> int64 config.DIn then
            invalidArg (nameof next) $"""the SAE for {config.HookName} reads [batch, {config.DIn}], but got a batch of shape [{String.Join(", ", x.shape)}]"""
        x
    let scale = inputScale draw settings.BatchSize config.DIn
    // Training needs gradients even when the caller evaluates under no_grad.
    use _grad = torch.enable_grad()
    let sae = Sae.Init(config, settings.Seed, settings.InitialThreshold)
    do
        use _scope = torch.NewDisposeScope()
        use _noGrad = torch.no_grad()
        // b_dec starts at the data mean (SAELens's "mean" init), so the encoder first sees centred inputs.
        sae.b_dec.copy_((draw settings.BatchSize).mul(sc scale).mean([| 0L |])) |> ignore
    let optimizer = torch.optim.Adam(sae.Parameters, lr = settings.LearningRate)
    let unitNorm = Architecture.unitNormDecoder config.Architecture
    let auxK = if settings.AuxK > 0 then settings.AuxK else max 1 (config.DIn / 2)
    let sinceFired = torch.zeros(int64 config.DSae)
    let points = ResizeArray<LogPoint>()
    let mutable batchThreshold = nan
    for step in 0 .. settings.Steps - 1 do
        use _scope = torch.NewDisposeScope()
        let lr = learningRateAt settings step
        for g in optimizer.ParamGroups do g.LearningRate <- lr
        let lambda = settings.SparsityCoefficient * min 1.0 (float (step + 1) / max 1.0 (settings.SparsityWarmupFraction * float settings.Steps))
        let x = (draw settings.BatchSize).mul(sc scale)                       // [batch, d_in]
        let pre = sae.Pre x                                                 // [batch, d_sae]
        let acts =
            match config.Architecture with
            | Standard -> StandardSae.activate pre
            | TopK -> TopKSae.activate config.K pre
            | BatchTopK -> TopKSae.activateBatch config.K pre
            | JumpRelu -> JumpReluSae.activate settings.Bandwidth pre sae.Threshold
        let xHat = sae.Decode acts                                          // [batch, d_in]
        let mse = xHat.sub(x).square().sum(-1L).mean()
        let sparsity =
            match config.Architecture with
            | Standard -> StandardSae.penalty acts sae.W_dec |> fun p -> p.mul(sc lambda)
            | JumpRelu -> JumpReluSae.penalty settings.Bandwidth pre sae.Threshold |> fun p -> p.mul(sc lambda)
            | TopK | BatchTopK -> torch.zeros(1).squeeze()
        let dead = sinceFired.gt(sc (float settings.DeadWindow))              // [d_sae]
        let deadCount = dead.sum().item<int64>() |> int
        let aux =
            if deadCount = 0 then torch.zeros(1).squeeze()
            else
                // Gao et al.'s aux-k: the dead latents' top pre-activations try to explain what the live ones missed.
                let error = x.sub(xHat).detach()
                let masked = pre.masked_fill(dead.logical_not().unsqueeze(0), Double.NegativeInfinity)
                let auxActs = TopKSae.activate (min auxK deadCount) masked
                auxActs.matmul(sae.W_dec).sub(error).square().sum(-1L).mean().mul(sc settings.AuxCoefficient)
        let loss = mse.add(sparsity).add(aux)
        optimizer.zero_grad()
        loss.backward()
        if unitNorm then sae.RemoveParallelGradient()
        torch.nn.utils.clip_grad_norm_(sae.Parameters, 1.0) |> ignore
        optimizer.step() |> ignore
        if unitNorm then sae.NormalizeDecoderRows()
        use _noGrad = torch.no_grad()
        let fired = acts.detach().gt(sc 0.0).any(0L)                          // [d_sae]
        sinceFired.add_(sc 1.0).masked_fill_(fired, sc 0.0) |> ignore
        if config.Architecture = BatchTopK then
            match TopKSae.smallestKept (acts.detach()) with
            | Some v -> batchThreshold <- (if Double.IsNaN batchThreshold then v else 0.99 * batchThreshold + 0.01 * v)
            | None -> ()
        if (step + 1) % settings.LogEvery = 0 || step = settings.Steps - 1 then
            let l0 = acts.detach().gt(sc 0.0).sum(-1L).to_type(torch.float32).mean().item<float32>() |> float
            let p = { Step = step + 1; Mse = float (mse.item<float32>()); L0 = l0; Dead = deadCount }
            points.Add p
            log (sprintf "  %s %s step %d/%d: mse %.4f (scaled), L0 %.2f, dead %d" (Architecture.name config.Architecture) config.ModelName p.Step settings.Steps p.Mse p.L0 p.Dead)
        MechInterp.Native.Allocator.AfterStep step
    if config.Architecture = BatchTopK then sae.SetBatchThreshold(if Double.IsNaN batchThreshold then 0.0 else batchThreshold)
    let deadAtEnd = sinceFired.gt(sc (float settings.DeadWindow)).sum().item<int64>() |> int
    sinceFired.Dispose()
    optimizer.Dispose()
    for p in sae.Parameters do p.grad <- null
    sae.FoldInputScale scale
    { Sae = sae; Scale = scale; Log = List.ofSeq points; DeadAtEnd = deadAtEnd; Seconds = clock.Elapsed.TotalSeconds
      Samples = int64 settings.Steps * int64 settings.BatchSize }
