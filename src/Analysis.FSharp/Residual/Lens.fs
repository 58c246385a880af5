/// Reading a stream the way the model reads its last one: through its own final norm and unembedding.
/// Shared by the logit lens, the tuned lens and layer surgery. Works on ordinary and batched models: the
/// functions here take and return tensors with the instance dimension first ([instance, ...], instance 1
/// for an ordinary model), so both run one code path.
module MechInterp.Analysis.Residual.Lens

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type Tensor = torch.Tensor

/// An activation as the model holds it inside: [instance, ...] (an ordinary model's hooks hide instance 1).
let instanced (model: HookedTransformer) (x: Tensor) = if model.IsBatched then x else x.unsqueeze(0)

/// The inverse of `instanced`: what the model's hooks and forward return.
let external (model: HookedTransformer) (x: Tensor) = if model.IsBatched then x else x.squeeze(0)

/// stream [instance, ..., d_model] → logits [instance, ..., d_vocab] through the model's ln_final (with the
/// stream's own statistics) and unembedding: what the logits would be if the model ended there.
let readOut (model: HookedTransformer) (stream: Tensor) = model.unembed.forward(model.ln_final.forward(stream))

/// The stream after 0, 1, .., n_layers blocks: blocks.0.hook_resid_pre, then each block's hook_resid_post.
let streamNames (model: HookedTransformer) =
    [ yield HookNames.ResidPre 0
      for l in 0 .. model.Config.n_layers - 1 -> HookNames.ResidPost l ]

/// The streams of a cache that recorded `streamNames` → [n_layers + 1, instance, batch, pos, d_model].
let streams (model: HookedTransformer) (cache: ActivationCache) =
    torch.stack([| for name in streamNames model -> instanced model cache.[name] |])

/// Runs `f` with the model's parameters excluded from autograd (a lens trains its own parameters through
/// the model's readout), restoring each parameter's flag after, also when `f` throws.
let withFrozenModel (model: HookedTransformer) (f: unit -> 'a) =
    let parameters = model.parameters() |> Array.ofSeq
    let flags = parameters |> Array.map (fun p -> p.requires_grad)
    try
        for p in parameters do p.requires_grad <- false
        f ()
    finally
        Array.iter2 (fun (p: TorchSharp.Modules.Parameter) flag -> p.requires_grad <- flag) parameters flags

/// KL(p ‖ q) per position from logits [.., vocab] → [..]: how much of the model's own prediction p a readout q misses.
let kl (targetLogits: Tensor) (logits: Tensor) =
    let logP = torch.nn.functional.log_softmax(targetLogits, -1L)
    let logQ = torch.nn.functional.log_softmax(logits, -1L)
    (logP.exp() * (logP - logQ)).sum(-1L)

/// Mean of x [instance, batch, pos'] over the positions a mask [instance, batch, pos'] (bool) selects → [instance].
let maskedMean (x: Tensor) (mask: Tensor) =
    let m = mask.to_type(x.dtype)
    (x * m).sum([| 1L; 2L |]) / m.sum([| 1L; 2L |]).clamp_min(TorchSharp.Scalar.op_Implicit 1.0)
