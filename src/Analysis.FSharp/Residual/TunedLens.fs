/// The tuned lens (Belrose et al. 2023): one affine translator per layer, x ↦ x + x·A_l + b_l, trained so
/// that the translated stream read out through the model's own final norm and unembedding predicts the
/// model's final distribution (KL to its own output). Initialized at A = 0, b = 0, where it is the logit lens;
/// how far training moves it from there measures how far a layer's space is from the output space.
module MechInterp.Analysis.Residual.TunedLens

open System
open System.IO
open TorchSharp
open MechInterp.IO
open MechInterp.Model
open MechInterp.Analysis.Residual.Lens

/// Translators for the streams after 0 .. n_layers − 1 blocks (the last stream is the output itself).
type TunedLens =
    { /// [instance, n_layers, d_model, d_model]; zero is the logit lens.
      A: Tensor
      /// [instance, n_layers, d_model]
      B: Tensor }
    interface IDisposable with
        member this.Dispose() =
            this.A.Dispose()
            this.B.Dispose()

/// How a lens is fitted: full-batch Adam on held-out streams.
type Fit = { Steps: int; LearningRate: float }

let defaultFit = { Steps = 300; LearningRate = 3e-3 }

/// The lens that translates nothing (the logit lens), for a model's instances, layers and width.
let identity (model: HookedTransformer) =
    let i, l, d = int64 ((if model.IsBatched then model.Instances.Value else 1)), int64 model.Config.n_layers, int64 model.Config.d_model
    { A = torch.zeros(i, l, d, d).DetachFromDisposeScope(); B = torch.zeros(i, l, d).DetachFromDisposeScope() }

let private checkStreams (model: HookedTransformer) (streams: Tensor) =
    let l, i, d = int64 model.Config.n_layers, int64 ((if model.IsBatched then model.Instances.Value else 1)), int64 model.Config.d_model
    if streams.dim() <> 5L || streams.shape.[0] <> l + 1L || streams.shape.[1] <> i || streams.shape.[4] <> d then
        invalidArg (nameof streams)
            $"streams must be [n_layers + 1 = {l + 1L}, instance = {i}, batch, pos, d_model = {d}] (Lens.streams), got [{String.Join(',', streams.shape)}]"

/// Streams [n_layers + 1, instance, batch, pos, d_model] → logits per layer [n_layers + 1, instance, batch, pos, vocab]:
/// the translated readout of layers 0 .. n_layers − 1 and the model's own logits at n_layers.
let logits (model: HookedTransformer) (lens: TunedLens) (streams: Tensor) =
    checkStreams model streams
    let l = streams.shape.[0] - 1L
    let i, b, p, d = streams.shape.[1], streams.shape.[2], streams.shape.[3], streams.shape.[4]
    let x = streams.narrow(0L, 0L, l).permute(1L, 0L, 2L, 3L, 4L).reshape(i, l, b * p, d)   // [instance, layer, token, d]
    let translated = x + x.matmul(lens.A) + lens.B.unsqueeze(2L)
    let read = (readOut model (translated.reshape(i, l, b, p, d))).permute(1L, 0L, 2L, 3L, 4L)   // [layer, instance, batch, pos, vocab]
    torch.cat([| read; (readOut model streams.[l]).unsqueeze(0L) |], 0L)

/// The logit lens on the same streams: every layer read out untranslated → [n_layers + 1, instance, batch, pos, vocab].
let logitLens (model: HookedTransformer) (streams: Tensor) =
    checkStreams model streams
    (readOut model (streams.permute(1L, 0L, 2L, 3L, 4L))).permute(1L, 0L, 2L, 3L, 4L)     // via [instance, layer, batch, pos, ..]

/// KL from the model's output to each layer's readout, mean over every position → [n_layers + 1, instance].
let klByLayer (layerLogits: Tensor) =
    let final = layerLogits.[-1L].unsqueeze(0L)
    (kl (final.expand_as layerLogits) layerLogits).mean([| 2L; 3L |])

/// Fits a lens on held-out streams [n_layers + 1, instance, batch, pos, d_model] of the model: each layer's
/// translator (and each instance's) minimizes the mean KL from the model's output to its readout.
let train (model: HookedTransformer) (fit: Fit) (streams: Tensor) =
    checkStreams model streams
    if fit.Steps < 0 then invalidArg (nameof fit) $"steps must be non-negative, got {fit.Steps}"
    if not (fit.LearningRate > 0.0) then invalidArg (nameof fit) $"learning rate must be positive, got {fit.LearningRate}"
    let start = identity model
    let a = new TorchSharp.Modules.Parameter(start.A, true)
    let b = new TorchSharp.Modules.Parameter(start.B, true)
    let streams = streams.detach()
    withFrozenModel model (fun () ->
        use optimizer = torch.optim.Adam([| a; b |], fit.LearningRate)
        for _ in 1 .. fit.Steps do
            use _scope = torch.NewDisposeScope()
            optimizer.zero_grad()
            let lens = { A = a; B = b }
            let layerLogits = logits model lens streams
            // Each translator only moves its own layer's KL, so the sum over layers trains all at once.
            let loss = (klByLayer layerLogits).narrow(0L, 0L, int64 model.Config.n_layers).sum(0L).mean()
            loss.backward()
            optimizer.step() |> ignore)
    let fitted = { A = a.detach().clone().DetachFromDisposeScope(); B = b.detach().clone().DetachFromDisposeScope() }
    a.Dispose()
    b.Dispose()
    fitted

let private kind = "mechinterp.tuned_lens"

/// Writes the lens as safetensors (A, B; the kind and shapes in the metadata), atomically.
let save (path: string) (lens: TunedLens) =
    SafeTensors.Write(path, readOnlyDict [ "A", lens.A; "B", lens.B ], readOnlyDict [ "kind", kind ])

/// Reads a lens written by `save` and checks it fits the model's instances, layers and width.
let load (model: HookedTransformer) (path: string) =
    let struct (tensors, metadata) = SafeTensors.Read path
    let fail (why: string) =
        for t in tensors.Values do t.Dispose()
        raise (InvalidDataException $"{path}: {why}")
    match metadata.TryGetValue "kind" with
    | true, k when k = kind -> ()
    | true, k -> fail $"metadata kind is '{k}', not a tuned lens ('{kind}')"
    | _ -> fail "no metadata kind: not a tuned lens"
    let expected = identity model
    use _ = expected
    for name, want in [ "A", expected.A; "B", expected.B ] do
        match tensors.TryGetValue name with
        | true, t when t.shape = want.shape -> ()
        | true, t -> fail $"tensor {name} is [{String.Join(',', t.shape)}], the model needs [{String.Join(',', want.shape)}]"
        | _ -> fail $"no tensor {name}"
    { A = tensors.["A"]; B = tensors.["B"] }
