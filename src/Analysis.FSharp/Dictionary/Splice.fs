/// Running a model with an SAE's reconstruction in place of a hook's activation, and SAELens's spliced-in
/// scores: CE loss recovered (CE_zero − CE_sae) / (CE_zero − CE_clean), with the hook zero-ablated for CE_zero,
/// and the same ratio for the KL divergence from the clean next-token distribution.
module MechInterp.Analysis.Dictionary.Splice

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Training

type Tensor = torch.Tensor

/// A hook replacing `sae.Config.HookName`'s activation with x̂; with `keepError`, x̂ + (x − x̂) with the error
/// term detached, so the forward pass is unchanged and gradients flow through the SAE.
let hook (sae: Sae) (keepError: bool) =
    Hook(sae.Config.HookName, HookFn(fun act _ ->
        sae.Check act
        let xHat = sae.Reconstruct act
        if keepError then xHat.add(act.sub(xHat).detach()) else xHat))

/// logits with the SAE spliced in.
let run (model: HookedTransformer) (sae: Sae) (keepError: bool) (tokens: Tensor) =
    model.RunWithHooks(tokens, hook sae keepError)

type SpliceScores =
    { CeClean: float
      CeSae: float
      CeZero: float
      /// (CE_zero − CE_sae) / (CE_zero − CE_clean).
      CeLossRecovered: float
      KlSae: float
      KlZero: float
      /// (KL_zero − KL_sae) / KL_zero.
      KlRecovered: float }

/// The scores on a batch of tokens [batch, pos] with a loss mask [batch, pos − 1] (the next-token positions).
let scores (model: HookedTransformer) (sae: Sae) (tokens: Tensor) (mask: Tensor) : SpliceScores =
    use _scope = torch.NewDisposeScope()
    use _noGrad = torch.no_grad()
    let zero = Hook(sae.Config.HookName, HookFn(fun act _ -> torch.zeros_like act))
    let clean = model.Forward tokens
    let withSae = run model sae false tokens
    let zeroed = model.RunWithHooks(tokens, zero)
    let ce (logits: Tensor) = float (Losses.Masked(logits, tokens, mask).mean().item<float32>())
    let kl (logits: Tensor) =
        // KL(clean ‖ spliced) per next-token position, averaged over the masked ones.
        let p = clean.narrow(1L, 0L, clean.shape.[1] - 1L).log_softmax(-1L)
        let q = logits.narrow(1L, 0L, logits.shape.[1] - 1L).log_softmax(-1L)
        let perPos = p.exp().mul(p.sub(q)).sum(-1L)                         // [batch, pos − 1]
        let m = mask.to_type(torch.float32)
        float (perPos.mul(m).sum().div(m.sum()).item<float32>())
    let ceClean, ceSae, ceZero = ce clean, ce withSae, ce zeroed
    let klSae, klZero = kl withSae, kl zeroed
    { CeClean = ceClean; CeSae = ceSae; CeZero = ceZero
      CeLossRecovered = (ceZero - ceSae) / (ceZero - ceClean)
      KlSae = klSae; KlZero = klZero
      KlRecovered = (klZero - klSae) / klZero }
