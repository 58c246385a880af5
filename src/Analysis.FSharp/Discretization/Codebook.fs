/// Vector quantization of the residual stream: after every block, each position's whole vector is replaced
/// by the nearest entry of a learned codebook (VQ-VAE, van den Oord et al. 2017). Entries follow exponential
/// moving averages of the vectors assigned to them (Razavi et al. 2019), so the codebook needs no optimizer;
/// the gradient crosses the lookup straight-through, and a commitment loss pulls the stream toward its codes.
/// A quantizer holds one codebook per instance of a batched model.
module MechInterp.Analysis.Discretization.Codebook

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type CodebookSettings =
    { /// Entries per codebook (one codebook per quantized hook point and instance).
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

let private scalar (x: float) = TorchSharp.Scalar.op_Implicit(float32 x)

/// One codebook [size, d_model] per instance, with its EMA statistics. Each is initialized from the first batch
/// it sees (random rows of its own instance's vectors), so no entry starts far from the data; in experiment_1
/// that is the step-0 measurement, the untrained model's stream on the evaluation batch (random tokens, so
/// nothing about later predictions), which the EMA forgets within a few hundred steps. Updates only on forward
/// passes with gradients on (training steps), never on measurements. `seeds` gives each instance's seed.
type VectorQuantizer(settings: CodebookSettings, seeds: int[]) =
    let settings = validate settings
    do if seeds.Length = 0 then invalidArg (nameof seeds) "a quantizer needs at least one instance: seeds is empty"
    let instances = int64 seeds.Length
    let generators = seeds |> Array.map (fun s -> new torch.Generator(uint64 s))
    let mutable codes: torch.Tensor | null = null         // [instance, size, d]
    let mutable counts: torch.Tensor | null = null        // [instance, size]: EMA of assignments
    let mutable sums: torch.Tensor | null = null          // [instance, size, d]: EMA of assigned vectors
    let mutable usage: torch.Tensor | null = null         // [instance, size]: assignments since ResetUsage
    let pending = Collections.Generic.List<torch.Tensor>()

    /// A quantizer of one instance starting from given state (a copy), for analysing one model of a batch.
    new(settings, seed: int, state: (torch.Tensor * torch.Tensor * torch.Tensor) option) as this =
        VectorQuantizer(settings, [| seed |])
        then
            match state with
            | Some(c, n, s) -> this.Load(c, n, s)
            | None -> ()

    member _.Settings = settings
    member _.Instances = int instances

    member private _.Load(c: torch.Tensor, n: torch.Tensor, s: torch.Tensor) =
        codes <- keep codes (c.detach().clone())
        counts <- keep counts (n.detach().clone())
        sums <- keep sums (s.detach().clone())
        usage <- keep usage (torch.zeros(c.shape.[0], c.shape.[1]))

    /// The nearest entry of every vector of x [instance, .., d] (straight-through), updating the codebooks when training.
    member _.Quantize(x: torch.Tensor) : torch.Tensor =
        if x.dim() < 2L || x.shape.[0] <> instances then
            invalidArg (nameof x) $"x must be [instance = {instances}, .., d], got [{String.Join(',', x.shape)}]"
        let d = x.shape.[x.shape.Length - 1]
        let flat = x.detach().reshape(instances, -1L, d)                                          // [instance, n, d]
        let n = flat.shape.[1]
        let k = int64 settings.Size
        if isNull codes then
            use _ = torch.no_grad()
            let picks =
                [| for i in 0 .. int instances - 1 ->
                       let rows = torch.randint(n, [| k |], generator = generators.[i])
                       flat.[int64 i].index_select(0L, rows) |]
            codes <- keep null (torch.stack(picks).clone())
            counts <- keep null (torch.ones(instances, k))
            sums <- keep null (codes.clone())
            usage <- keep null (torch.zeros(instances, k))
        elif codes.shape.[2] <> d then
            invalidArg (nameof x) $"this codebook has entries of width {codes.shape.[2]}, got vectors of width {d}"
        let c = codes
        let distances =                                                                           // [instance, n, size]
            flat.pow(TorchSharp.Scalar.op_Implicit 2).sum(-1L, keepdim = true)
            - flat.bmm(c.transpose(1L, 2L)).mul(scalar 2.0)
            + c.pow(TorchSharp.Scalar.op_Implicit 2).sum(-1L).unsqueeze(1L)
        let index = distances.argmin(-1L)                                                          // [instance, n]
        // Instance i's entry e is row i·size + e of the flattened codebooks.
        let offsets = torch.arange(instances).mul(TorchSharp.Scalar.op_Implicit k).unsqueeze(1L)
        let flatIndex = (index + offsets).reshape(-1L)                                               // [instance·n]
        let q = c.reshape(-1L, d).index_select(0L, flatIndex).view(x.shape)
        // Per-entry counts and sums by scatter (O(n·d)), not a one-hot [n, size] matmul (O(n·size·d)).
        let assigned =
            torch.zeros(instances * k).index_add_(0L, flatIndex, torch.ones(flatIndex.shape.[0]), scalar 1.0).view(instances, k)   // [instance, size]
        usage <- keep usage (usage + assigned)
        if torch.is_grad_enabled() then
            use _ = torch.no_grad()
            let newCounts = counts.mul(scalar settings.Decay) + assigned.mul(scalar (1.0 - settings.Decay))
            let assignedSums = torch.zeros(instances * k, d).index_add_(0L, flatIndex, flat.reshape(-1L, d), scalar 1.0).view(instances, k, d)
            let newSums = sums.mul(scalar settings.Decay) + assignedSums.mul(scalar (1.0 - settings.Decay))
            // Laplace smoothing keeps an unused entry's count above zero (Razavi et al.).
            let total = newCounts.sum(-1L, keepdim = true)                                        // [instance, 1]
            let eps = 1e-5
            let smoothed = (newCounts + scalar eps) / (total + scalar (float k * eps)) * total
            counts <- keep counts newCounts
            sums <- keep sums newSums
            codes <- keep codes (newSums / smoothed.unsqueeze(-1L))
        if torch.is_grad_enabled() && settings.Commitment > 0.0 then
            // β·mse per instance → [instance]
            let perInstance = (x - q.detach()).pow(TorchSharp.Scalar.op_Implicit 2).reshape(instances, -1L).mean([| 1L |])
            pending.Add(perInstance.mul(scalar settings.Commitment))
        x + (q - x).detach()

    /// The commitment loss per instance [instance] of the training forward passes since the last call (None if there were none).
    member _.TakeCommitmentLoss() : torch.Tensor option =
        if pending.Count = 0 then None
        else
            let total = pending |> Seq.reduce (fun a b -> a + b)
            pending.Clear()
            Some total

    /// Per instance: entries used and the perplexity exp(H) of the assignment distribution since the last reset.
    member _.Usage() : (int * float)[] =
        match usage with
        | null -> Array.create (int instances) (0, 0.0)
        | u ->
            use _ = torch.no_grad()
            let all = u.data<float32>().ToArray()
            [| for i in 0 .. int instances - 1 ->
                   let counts = all.[i * settings.Size .. (i + 1) * settings.Size - 1]
                   let total = Array.sum counts
                   let used = counts |> Array.filter (fun c -> c > 0.0f) |> Array.length
                   let entropy = counts |> Array.sumBy (fun c -> if c > 0.0f then (let p = float (c / total) in -p * log p) else 0.0)
                   used, exp entropy |]

    member _.ResetUsage() =
        match usage with
        | null -> ()
        | u -> u.zero_() |> ignore

    /// Instance i's codebook as a quantizer of its own (copied state), for analysing that model alone.
    member _.Select(i: int) =
        if i < 0 || int64 i >= instances then raise (ArgumentOutOfRangeException(nameof i, i, $"instance {i} is outside [0, {instances})"))
        let state =
            match codes, counts, sums with
            | null, _, _ | _, null, _ | _, _, null -> None
            | c, n, s -> Some(c.narrow(0L, int64 i, 1L), n.narrow(0L, int64 i, 1L), s.narrow(0L, int64 i, 1L))
        new VectorQuantizer(settings, seeds.[i], state)

    interface IDisposable with
        member _.Dispose() =
            for t in [ codes; counts; sums; usage ] do
                match t with
                | null -> ()
                | t -> t.Dispose()
            for g in generators do g.Dispose()
