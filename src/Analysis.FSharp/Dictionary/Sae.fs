/// A sparse autoencoder with SAELens's tensors and meanings: f = act((x − b_dec) W_enc + b_enc), x̂ = f W_dec + b_dec,
/// W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], and for JumpReLU and BatchTopK a
/// threshold [d_sae]. The architecture files hold each activation; this type holds the weights they share.
namespace MechInterp.Analysis.Dictionary

open System
open TorchSharp
open TorchSharp.Modules

type private Tensor = torch.Tensor

type Sae private (config: SaeConfig, wEnc: Tensor, bEnc: Tensor, wDec: Tensor, bDec: Tensor, threshold: Tensor) =
    do SaeConfig.validate config
    let param (t: Tensor) = new Parameter(t.detach().to_type(torch.float32).contiguous(), true)
    let wEnc = param wEnc
    let bEnc = param bEnc
    let wDec = param wDec
    let bDec = param bDec
    // JumpReLU trains log θ (θ stays positive); BatchTopK's threshold is an estimate, not a parameter.
    let logThreshold = param (threshold.clamp_min(sc 1e-12).log())
    let mutable batchThreshold = threshold.detach().to_type(torch.float32).clone()

    static let shape (t: Tensor) = "[" + String.Join(", ", t.shape) + "]"

    /// Checks a tensor's shape against the config, naming the tensor.
    static let expect (name: string) (t: Tensor) (dims: int64[]) =
        if t.shape <> dims then
            invalidArg name $"""{name} must have shape [{String.Join(", ", dims)}], got {shape t}"""

    /// From given weights (copied), with every shape checked against the config.
    static member Create(config: SaeConfig, wEnc: Tensor, bEnc: Tensor, wDec: Tensor, bDec: Tensor, threshold: Tensor option) =
        SaeConfig.validate config
        let d, s = int64 config.DIn, int64 config.DSae
        expect "W_enc" wEnc [| d; s |]
        expect "b_enc" bEnc [| s |]
        expect "W_dec" wDec [| s; d |]
        expect "b_dec" bDec [| d |]
        let threshold =
            match threshold with
            | Some t -> expect "threshold" t [| s |]; t
            | None -> torch.zeros(s)
        for name, t in [ "W_enc", wEnc; "b_enc", bEnc; "W_dec", wDec; "b_dec", bDec; "threshold", threshold ] do
            if not (t.isfinite().all().item<bool>()) then invalidArg name $"{name} contains NaN or infinite values"
        new Sae(config, wEnc, bEnc, wDec, bDec, threshold)

    /// A fresh SAE as Anthropic's April update starts one: decoder rows random directions (norm 0.1 for the
    /// standard SAE, 1 for the unit-norm architectures), W_enc = W_decᵀ, zero biases; JumpReLU's θ starts at
    /// `threshold` (BatchTopK's estimate at 0 until training sets it).
    static member Init(config: SaeConfig, seed: int64, threshold: float) =
        SaeConfig.validate config
        // No dispose scope here: the new SAE's parameters must outlive this call; the temporaries are disposed by hand.
        use generator = new torch.Generator(uint64 seed)
        use rows = torch.randn([| int64 config.DSae; int64 config.DIn |], generator = generator)
        let norm = if Architecture.unitNormDecoder config.Architecture then 1.0 else 0.1
        use rowNorms = rows.norm(1, true)
        use unit = rows.div(rowNorms)
        use wDec = unit.mul(sc norm)
        use wEnc = wDec.t()
        use bEnc = torch.zeros(int64 config.DSae)
        use bDec = torch.zeros(int64 config.DIn)
        use t = torch.full([| int64 config.DSae |], sc (if config.Architecture = JumpRelu then threshold else 0.0))
        new Sae(config, wEnc, bEnc, wDec, bDec, t)

    member _.Config = config
    member _.W_enc : Tensor = wEnc
    member _.b_enc : Tensor = bEnc
    member _.W_dec : Tensor = wDec
    member _.b_dec : Tensor = bDec
    /// JumpReLU: θ = exp(log θ), differentiable in training; BatchTopK: the learned estimate; else zeros.
    member _.Threshold : Tensor =
        match config.Architecture with
        | JumpRelu -> logThreshold.exp()
        | _ -> batchThreshold
    member internal _.LogThreshold = logThreshold
    member internal _.SetBatchThreshold(value: float) =
        batchThreshold.Dispose()
        batchThreshold <- torch.full([| int64 config.DSae |], sc value)

    /// The tensors an optimizer trains.
    member _.Parameters : Parameter list =
        [ wEnc; bEnc; wDec; bDec ] @ (if config.Architecture = JumpRelu then [ logThreshold ] else [])

    /// Rejects an input whose last dimension is not d_in, or that holds NaN, naming the value.
    member _.Check(x: Tensor) =
        if x.dim() < 1L || x.shape.[x.shape.Length - 1] <> int64 config.DIn then
            invalidArg (nameof x) $"the SAE reads d_in = {config.DIn} ({config.HookName}), but the activations have shape {shape x}"
        if x.isnan().any().item<bool>() then
            let count = x.isnan().sum().item<int64>()
            invalidArg (nameof x) $"the activations for the SAE on {config.HookName} contain {count} NaN values"

    /// x [..., d_in] → pre-activations [..., d_sae].
    member _.Pre(x: Tensor) = x.sub(bDec).matmul(wEnc).add(bEnc)

    /// Inference latents, x [..., d_in] → f [..., d_sae]: each architecture's own rule (BatchTopK by its threshold).
    member this.Encode(x: Tensor) : Tensor =
        this.Check x
        let lead = x.shape.[.. x.shape.Length - 2]
        let pre = this.Pre(x.reshape(-1L, int64 config.DIn))         // [tokens, d_sae]
        let f =
            match config.Architecture with
            | Standard -> StandardSae.activate pre
            | TopK -> TopKSae.activate config.K pre
            | BatchTopK | JumpRelu -> TopKSae.activateThreshold this.Threshold pre
        f.reshape(Array.append lead [| int64 config.DSae |])

    /// f [..., d_sae] → x̂ [..., d_in].
    member _.Decode(f: Tensor) : Tensor = f.matmul(wDec).add(bDec)

    /// x̂ = Decode(Encode x).
    member this.Reconstruct(x: Tensor) = this.Decode(this.Encode x)

    /// Unit-norm decoder rows (after each optimizer step of the architectures that hold them so).
    member _.NormalizeDecoderRows() =
        use _noGrad = torch.no_grad()
        wDec.div_(wDec.norm(1, true).clamp_min(sc 1e-8)) |> ignore

    /// Removes the part of W_dec's gradient along each row, so a step changes directions, not norms.
    member _.RemoveParallelGradient() =
        use _noGrad = torch.no_grad()
        match wDec.grad with
        | null -> ()
        | g ->
            use unit = wDec.div(wDec.norm(1, true).clamp_min(sc 1e-8))
            use along = g.mul(unit).sum(1L, true)
            g.sub_(along.mul(unit)) |> ignore

    /// Folds a scale s used in training (the SAE saw s · x) into the weights, so the SAE reads raw x:
    /// W_enc ← s W_enc, W_dec ← W_dec / s, b_dec ← b_dec / s; thresholds act on pre-activations and stay.
    member _.FoldInputScale(s: float) =
        if not (Double.IsFinite s) || s <= 0.0 then invalidArg (nameof s) $"the input scale must be finite and positive, got {s}"
        use _noGrad = torch.no_grad()
        wEnc.mul_(sc s) |> ignore
        wDec.div_(sc s) |> ignore
        bDec.div_(sc s) |> ignore

    interface IDisposable with
        member _.Dispose() =
            for t in [ wEnc :> Tensor; bEnc; wDec; bDec; logThreshold; batchThreshold ] do t.Dispose()
