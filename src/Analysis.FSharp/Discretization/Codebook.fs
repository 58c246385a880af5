/// Vector quantization of the residual stream: after every block, each position's whole vector is replaced
/// by the nearest entry of a learned codebook (VQ-VAE, van den Oord et al. 2017). Entries follow exponential
/// moving averages of the vectors assigned to them (Razavi et al. 2019), so the codebook needs no optimizer;
/// the gradient crosses the lookup straight-through, and a commitment loss pulls the stream toward its codes.
module MechInterp.Analysis.Discretization.Codebook

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type CodebookSettings =
    { /// Entries per codebook (one codebook per quantized hook point).
      Size: int
      /// β of the commitment loss β·‖x − sg(q)‖² (mean over positions and dimensions).
      Commitment: float
      /// EMA decay of the entries' counts and sums.
      Decay: float }

let validate (c: CodebookSettings) =
    if c.Size < 2 then invalidArg "Size" $"a codebook needs at least 2 entries, got {c.Size}"
    if not (c.Commitment >= 0.0) || Double.IsInfinity c.Commitment then invalidArg "Commitment" $"the commitment weight must be finite and ≥ 0, got {c.Commitment}"
    if not (c.Decay > 0.0 && c.Decay < 1.0) then invalidArg "Decay" $"the EMA decay must be in (0, 1), got {c.Decay}"
    c

/// Keeps a tensor alive past the dispose scope it was made in, disposing the one it replaces.
let private keep (old: torch.Tensor | null) (t: torch.Tensor) =
    match old with
    | null -> ()
    | o -> o.Dispose()
    t.DetachFromDisposeScope()

/// One codebook [size, d_model] with its EMA statistics. Initialized from the first batch it sees (random
/// rows of it), so no entry starts far from the data; in experiment_1 that is the step-0 measurement, the
/// untrained model's stream on the evaluation batch (random tokens, so nothing about later predictions),
/// which the EMA forgets within a few hundred steps. Updates only on forward passes with gradients on
/// (training steps), never on measurements.
type VectorQuantizer(settings: CodebookSettings, seed: int) =
    let settings = validate settings
    let generator = new torch.Generator(uint64 seed)
    let mutable codes: torch.Tensor | null = null         // [size, d]
    let mutable counts: torch.Tensor | null = null        // [size]: EMA of assignments
    let mutable sums: torch.Tensor | null = null          // [size, d]: EMA of assigned vectors
    let mutable usage: torch.Tensor | null = null         // [size]: assignments since ResetUsage
    let pending = Collections.Generic.List<torch.Tensor>()

    member _.Settings = settings

    /// The nearest entry of every vector of x [.., d] (straight-through), updating the codebook when training.
    member _.Quantize(x: torch.Tensor) : torch.Tensor =
        let d = x.shape.[x.shape.Length - 1]
        let flat = x.detach().reshape(-1L, d)                                                    // [n, d]
        let k = int64 settings.Size
        if isNull codes then
            use _ = torch.no_grad()
            let rows = torch.randint(flat.shape.[0], [| k |], generator = generator)
            codes <- keep null (flat.index_select(0L, rows).clone())
            counts <- keep null (torch.ones(k))
            sums <- keep null (codes.clone())
            usage <- keep null (torch.zeros(k))
        elif codes.shape.[1] <> d then
            invalidArg (nameof x) $"this codebook has entries of width {codes.shape.[1]}, got vectors of width {d}"
        let c = codes
        let distances =                                                                          // [n, size]
            flat.pow(TorchSharp.Scalar.op_Implicit 2).sum(1L, keepdim = true)
            - (flat.matmul(c.t())).mul(TorchSharp.Scalar.op_Implicit 2.0f)
            + c.pow(TorchSharp.Scalar.op_Implicit 2).sum(1L).unsqueeze(0L)
        let index = distances.argmin(1L)                                                          // [n]
        let q = c.index_select(0L, index).view(x.shape)
        // Per-entry counts and sums by scatter (O(n·d)), not a one-hot [n, size] matmul (O(n·size·d)).
        let assigned = torch.zeros(k).index_add_(0L, index, torch.ones(flat.shape.[0]), TorchSharp.Scalar.op_Implicit 1.0f)   // [size]
        usage <- keep usage (usage + assigned)
        if torch.is_grad_enabled() then
            use _ = torch.no_grad()
            let decay = TorchSharp.Scalar.op_Implicit(float32 settings.Decay)
            let rest = TorchSharp.Scalar.op_Implicit(float32 (1.0 - settings.Decay))
            let newCounts = counts.mul(decay) + assigned.mul(rest)
            let assignedSums = torch.zeros(k, d).index_add_(0L, index, flat, TorchSharp.Scalar.op_Implicit 1.0f)   // [size, d]
            let newSums = sums.mul(decay) + assignedSums.mul(rest)
            // Laplace smoothing keeps an unused entry's count above zero (Razavi et al.).
            let total = newCounts.sum()
            let eps = 1e-5f
            let smoothed = (newCounts + eps) / (total + float32 k * eps) * total
            counts <- keep counts newCounts
            sums <- keep sums newSums
            codes <- keep codes (newSums / smoothed.unsqueeze(1L))
        if torch.is_grad_enabled() && settings.Commitment > 0.0 then
            pending.Add(torch.nn.functional.mse_loss(x, q.detach()).mul(TorchSharp.Scalar.op_Implicit(float32 settings.Commitment)))
        x + (q - x).detach()

    /// The commitment loss of the training forward passes since the last call (None if there were none).
    member _.TakeCommitmentLoss() : torch.Tensor option =
        if pending.Count = 0 then None
        else
            let total = pending |> Seq.reduce (fun a b -> a + b)
            pending.Clear()
            Some total

    /// Entries used and the perplexity exp(H) of the assignment distribution since the last reset.
    member _.Usage() =
        match usage with
        | null -> 0, 0.0
        | u ->
            use _ = torch.no_grad()
            let counts = u.data<float32>().ToArray()
            let total = Array.sum counts
            let used = counts |> Array.filter (fun c -> c > 0.0f) |> Array.length
            let entropy = counts |> Array.sumBy (fun c -> if c > 0.0f then (let p = float (c / total) in -p * log p) else 0.0)
            used, exp entropy

    member _.ResetUsage() =
        match usage with
        | null -> ()
        | u -> u.zero_() |> ignore

    interface IDisposable with
        member _.Dispose() =
            for t in [ codes; counts; sums; usage ] do
                match t with
                | null -> ()
                | t -> t.Dispose()
            generator.Dispose()

/// A codebook for every block's resid_post, and the hooks that quantize through them.
type CodebookIntervention =
    { Quantizers: (string * VectorQuantizer) list
      Hooks: Hook[] }

    /// The summed commitment loss of the last training forward pass.
    member this.CommitmentLoss() =
        this.Quantizers
        |> List.choose (fun (_, q) -> q.TakeCommitmentLoss())
        |> function
            | [] -> None
            | losses -> Some(losses |> List.reduce (fun a b -> a + b))

    interface IDisposable with
        member this.Dispose() = for _, q in this.Quantizers do (q :> IDisposable).Dispose()

let attach (settings: CodebookSettings) (seed: int) (model: HookedTransformer) =
    let settings = validate settings
    let quantizers =
        [ for l in 0 .. model.Config.n_layers - 1 -> $"blocks.{l}.hook_resid_post", new VectorQuantizer(settings, seed * 1000 + l) ]
    let byName = dict quantizers
    { Quantizers = quantizers
      Hooks = [| Hook(Func<string, bool>(byName.ContainsKey), HookFn(fun act hook -> byName.[hook.Name].Quantize act)) |] }
