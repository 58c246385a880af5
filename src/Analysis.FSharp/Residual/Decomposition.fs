/// The residual stream as a sum of labelled parts (TransformerLens' decompose_resid,
/// accumulated_resid and apply_ln_to_stack), read from a model's cache through its public API.
module MechInterp.Analysis.Residual.Decomposition

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

type Tensor = torch.Tensor

/// Labelled slices of the residual stream: Stack is [component, batch, pos, d_model], one label a component.
type ResidualStack = { Labels: string[]; Stack: Tensor }

let private get (cache: ActivationCache) (name: string) = cache.[name]

/// The hook names decomposeResid and accumulatedResid read, to pass as RunWithCache's names filter.
let residualHookNames (model: HookedTransformer) =
    [ yield HookNames.Embed
      if not (isNull model.pos_embed) then yield HookNames.PosEmbed
      for l in 0 .. model.Config.n_layers - 1 do
          yield HookNames.ResidPre l
          yield HookNames.AttnOut l
          if not model.Config.attn_only then
              yield HookNames.MlpOut l
              yield HookNames.ResidMid l
          yield HookNames.ResidPost l
          yield HookNames.Z l
          yield HookNames.Pattern l
      yield HookNames.LnFinalScale ]
    |> Set.ofList

/// A names filter that caches what the residual analyses read.
let residualFilter (model: HookedTransformer) =
    let names = residualHookNames model
    System.Func<string, bool>(fun n -> names.Contains n)

/// embed, pos_embed, then each layer's attn_out and mlp_out: their sum is the final residual stream
/// (blocks.{last}.hook_resid_post) whenever nothing between the blocks rewrites the stream.
let decomposeResid (model: HookedTransformer) (cache: ActivationCache) =
    let cfg = model.Config
    let parts =
        [ yield "embed", get cache HookNames.Embed
          if not (isNull model.pos_embed) then yield "pos_embed", get cache HookNames.PosEmbed
          for l in 0 .. cfg.n_layers - 1 do
              yield $"{l}_attn_out", get cache (HookNames.AttnOut l)
              if not cfg.attn_only then yield $"{l}_mlp_out", get cache (HookNames.MlpOut l) ]
    { Labels = parts |> List.map fst |> Array.ofList
      Stack = torch.stack(parts |> List.map snd) }

/// The residual stream entering each layer (resid_pre), then the final resid_post; with
/// includeMid, each layer's resid_mid too. What the logit lens reads.
let accumulatedResid (model: HookedTransformer) (cache: ActivationCache) (includeMid: bool) =
    let cfg = model.Config
    let parts =
        [ for l in 0 .. cfg.n_layers - 1 do
              yield $"{l}_pre", get cache (HookNames.ResidPre l)
              if includeMid && not cfg.attn_only then yield $"{l}_mid", get cache (HookNames.ResidMid l)
          yield "final_post", get cache (HookNames.ResidPost (cfg.n_layers - 1)) ]
    { Labels = parts |> List.map fst |> Array.ofList
      Stack = torch.stack(parts |> List.map snd) }

/// Each head's write into the stream, z_h W_O[h] (b_O excluded), from the cached hook_z:
/// [batch, pos, head, d_model] for one layer (the same as attn.hook_result, which needs use_attn_result).
let headResults (model: HookedTransformer) (cache: ActivationCache) (layer: int) =
    use _ = torch.no_grad()
    model.blocks.[layer].attn.HeadResults(get cache (HookNames.Z layer))   // [batch, pos, head, d_model]

/// The stream cut finer than decomposeResid: embed, pos_embed, every head of every layer, each layer's
/// b_O, each layer's mlp_out. Sums to the same final residual.
let decomposeResidByHead (model: HookedTransformer) (cache: ActivationCache) =
    let cfg = model.Config
    let batch, pos = (get cache HookNames.Embed).shape.[0], (get cache HookNames.Embed).shape.[1]
    let parts =
        [ yield "embed", get cache HookNames.Embed
          if not (isNull model.pos_embed) then yield "pos_embed", get cache HookNames.PosEmbed
          for l in 0 .. cfg.n_layers - 1 do
              let heads = headResults model cache l
              for h in 0 .. cfg.n_heads - 1 do
                  yield $"L{l}H{h}", heads.select(2, int64 h)
              let bO = model.blocks.[l].attn.b_O.detach()
              yield $"L{l}_b_O", bO.expand(batch, pos, -1L)
              if not cfg.attn_only then yield $"{l}_mlp_out", get cache (HookNames.MlpOut l) ]
    { Labels = parts |> List.map fst |> Array.ofList
      Stack = torch.stack(parts |> List.map snd) }

/// apply_ln_to_stack: treats the final norm's scale as a constant (frozen at its cached value) and applies
/// it to every component: centred (LN, LNPre) and divided by ln_final.hook_scale. The norm's weight and
/// bias are not applied (logit attribution folds them in), exactly as TransformerLens on an unfolded model.
let applyLnToStack (model: HookedTransformer) (cache: ActivationCache) (stack: ResidualStack) =
    match model.Config.normalization_type with
    | "none" -> stack
    | _ -> { stack with Stack = model.ln_final.ApplyFrozenScale(stack.Stack, (get cache HookNames.LnFinalScale).unsqueeze(0)) }   // scale [1, batch, pos, 1]
