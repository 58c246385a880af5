/// The residual stream as a sum of labelled parts (TransformerLens' decompose_resid,
/// accumulated_resid and apply_ln_to_stack), read from a model's cache through its public API.
module MechInterp.Analysis.Residual.Decomposition

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type Tensor = torch.Tensor

/// Labelled slices of the residual stream: Stack is [component, batch, pos, d_model], one label a component.
type ResidualStack = { Labels: string[]; Stack: Tensor }

let private ofCore (s: MechInterp.Hooks.ResidualComponents) = { Labels = s.Labels; Stack = s.Stack }

/// The hook names decomposeResid and accumulatedResid read, to pass as RunWithCache's names filter.
let residualHookNames (model: HookedTransformer) = CacheHelpers.ResidualHookNames model |> Set.ofSeq

/// A names filter that caches what the residual analyses read.
let residualFilter (model: HookedTransformer) =
    let names = residualHookNames model
    System.Func<string, bool>(fun n -> names.Contains n)

/// embed, pos_embed, then each layer's attn_out and mlp_out: their sum is the final residual stream
/// (blocks.{last}.hook_resid_post) whenever nothing between the blocks rewrites the stream.
let decomposeResid (model: HookedTransformer) (cache: ActivationCache) = cache.DecomposeResid model |> ofCore

/// The residual stream entering each layer (resid_pre), then the final resid_post; with
/// includeMid, each layer's resid_mid too. What the logit lens reads.
let accumulatedResid (model: HookedTransformer) (cache: ActivationCache) (includeMid: bool) =
    cache.AccumulatedResid(model, includeMid) |> ofCore

/// Each head's write into the stream, z_h W_O[h] (b_O excluded), from the cached hook_z:
/// [batch, pos, head, d_model] for one layer (the same as attn.hook_result, which needs use_attn_result).
let headResults (model: HookedTransformer) (cache: ActivationCache) (layer: int) =
    use _ = torch.no_grad()
    model.blocks.[layer].attn.HeadResults(cache.[HookNames.Z layer])   // [batch, pos, head, d_model]

/// The stream cut finer than decomposeResid: embed, pos_embed, every head of every layer, each layer's
/// b_O, each layer's mlp_out. Sums to the same final residual.
let decomposeResidByHead (model: HookedTransformer) (cache: ActivationCache) = cache.DecomposeResidByHead model |> ofCore

/// apply_ln_to_stack: treats the final norm's scale as a constant (frozen at its cached value) and applies
/// it to every component: centred (LN, LNPre) and divided by ln_final.hook_scale. The norm's weight and
/// bias are not applied (logit attribution folds them in), exactly as TransformerLens on an unfolded model.
let applyLnToStack (model: HookedTransformer) (cache: ActivationCache) (stack: ResidualStack) =
    cache.ApplyLnToStack(model, MechInterp.Hooks.ResidualComponents(stack.Labels, stack.Stack)) |> ofCore
