/// Activation patching (clean → corrupted): run the corrupted input, put back the clean activation
/// at one place (a layer and position, or a head), and see how much of the clean metric returns.
module MechInterp.Analysis.Patching.ActivationPatching

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Patching.Ablation

/// One patching sweep: Values[row, column] is the metric with that place patched; Recovered is
/// (value − corrupted) / (clean − corrupted), 1 where the patch restores the clean behaviour.
type PatchingResult =
    { Component: string
      RowLabels: string[]
      ColumnLabels: string[]
      Values: float[,]
      Recovered: float[,]
      Clean: float
      Corrupted: float }

/// A hook that writes the clean activation into `hookName` at the given positions (axis 1), all when None,
/// and only into head `head` when given.
let patchHook (hookName: string) (clean: torch.Tensor) (positions: int list option) (head: int option) =
    Hook(hookName, HookFn(fun act _ ->
        if clean.shape <> act.shape then
            invalidOp $"clean activation of '{hookName}' is [{String.Join(',', clean.shape)}] but the corrupted one is [{String.Join(',', act.shape)}]; clean and corrupted inputs must have the same shape"
        let mutable mask = torch.ones(Array.create (int (act.dim())) 1L, dtype = torch.ScalarType.Bool)
        match positions with
        | Some ps ->
            let n = int act.shape.[1]
            let flags = Array.zeroCreate<bool> n
            for p in ps do
                if p < 0 || p >= n then invalidArg "positions" $"position {p} is out of range for {n} positions"
                flags.[p] <- true
            let shape = Array.init (int (act.dim())) (fun i -> if i = 1 then int64 n else 1L)
            mask <- mask.logical_and(torch.tensor(flags).reshape(shape))
        | None -> ()
        match head with
        | Some h -> mask <- mask.logical_and(oneIndexMask act (headAxis hookName) h "head")
        | None -> ()
        torch.where(mask, clean, act)))

/// The hook name of a per-layer component: resid_pre | resid_mid | resid_post | attn_out | mlp_out.
let componentHook (layer: int) (componentName: string) =
    match componentName with
    | "resid_pre" | "resid_mid" | "resid_post" | "attn_out" | "mlp_out" -> HookNames.Get(componentName, layer)
    | other -> invalidArg (nameof componentName) $"unknown component '{other}'; use resid_pre, resid_mid, resid_post, attn_out or mlp_out"

let private scalar (metric: torch.Tensor -> float) (logits: torch.Tensor) = metric logits

let private recovered clean corrupted (values: float[,]) =
    let span = clean - corrupted
    values |> Array2D.map (fun v -> if abs span < 1e-12 then nan else (v - corrupted) / span)

let private checkInputs (clean: torch.Tensor) (corrupted: torch.Tensor) =
    if clean.shape <> corrupted.shape then
        invalidArg (nameof corrupted)
            $"clean tokens [{String.Join(',', clean.shape)}] and corrupted tokens [{String.Join(',', corrupted.shape)}] must have the same shape"

/// Metric of the clean run, of the corrupted run, and the clean cache of the given hooks (caller disposes it).
let private baseline (model: HookedTransformer) cleanTokens corruptedTokens (metric: torch.Tensor -> float) (names: Set<string>) =
    checkInputs cleanTokens corruptedTokens
    use _ = torch.no_grad()
    let struct (cleanLogits, cache) = model.RunWithCache(cleanTokens, Func<string, bool>(fun n -> names.Contains n))
    let clean = scalar metric cleanLogits
    cleanLogits.Dispose()
    use corruptedLogits = model.forward corruptedTokens
    clean, scalar metric corruptedLogits, cache

/// Patches `componentName` (resid_pre, attn_out, mlp_out ...) at every layer × position: Values [layer, pos].
let patchLayerPosition (model: HookedTransformer) (cleanTokens: torch.Tensor) (corruptedTokens: torch.Tensor)
                       (metric: torch.Tensor -> float) (componentName: string) =
    let layers = model.Config.n_layers
    let names = [ for l in 0 .. layers - 1 -> componentHook l componentName ] |> Set.ofList
    for n in names do
        if not (model.Hooks.Points.ContainsKey n) then
            invalidArg (nameof componentName) $"the model has no hook '{n}' (an attention-only model has no resid_mid or mlp_out)"
    let clean, corrupted, cache = baseline model cleanTokens corruptedTokens metric names
    use cache = cache
    let positions = int cleanTokens.shape.[1]
    let values = Array2D.zeroCreate layers positions
    use _ = torch.no_grad()
    for l in 0 .. layers - 1 do
        let name = componentHook l componentName
        for p in 0 .. positions - 1 do
            use _scope = torch.NewDisposeScope()
            let logits = model.RunWithHooks(corruptedTokens, patchHook name cache.[name] (Some [ p ]) None)
            values.[l, p] <- scalar metric logits
    { Component = componentName
      RowLabels = [| for l in 0 .. layers - 1 -> $"L{l}" |]
      ColumnLabels = [| for p in 0 .. positions - 1 -> string p |]
      Values = values
      Recovered = recovered clean corrupted values
      Clean = clean
      Corrupted = corrupted }

/// Patches each head's output (attn.hook_z of that head, all positions): Values [layer, head].
let patchHeads (model: HookedTransformer) (cleanTokens: torch.Tensor) (corruptedTokens: torch.Tensor) (metric: torch.Tensor -> float) =
    let cfg = model.Config
    let names = [ for l in 0 .. cfg.n_layers - 1 -> (HookNames.Z l) ] |> Set.ofList
    let clean, corrupted, cache = baseline model cleanTokens corruptedTokens metric names
    use cache = cache
    let values = Array2D.zeroCreate cfg.n_layers cfg.n_heads
    use _ = torch.no_grad()
    for l in 0 .. cfg.n_layers - 1 do
        let name = (HookNames.Z l)
        for h in 0 .. cfg.n_heads - 1 do
            use _scope = torch.NewDisposeScope()
            let logits = model.RunWithHooks(corruptedTokens, patchHook name cache.[name] None (Some h))
            values.[l, h] <- scalar metric logits
    { Component = "head (attn.hook_z)"
      RowLabels = [| for l in 0 .. cfg.n_layers - 1 -> $"L{l}" |]
      ColumnLabels = [| for h in 0 .. cfg.n_heads - 1 -> $"H{h}" |]
      Values = values
      Recovered = recovered clean corrupted values
      Clean = clean
      Corrupted = corrupted }

/// Every sweep the model has hooks for: resid_pre, attn_out, mlp_out (dense models) by layer × position, and heads.
let patchEverything (model: HookedTransformer) cleanTokens corruptedTokens metric =
    [ yield patchLayerPosition model cleanTokens corruptedTokens metric "resid_pre"
      yield patchLayerPosition model cleanTokens corruptedTokens metric "attn_out"
      if not model.Config.attn_only then yield patchLayerPosition model cleanTokens corruptedTokens metric "mlp_out"
      yield patchHeads model cleanTokens corruptedTokens metric ]
