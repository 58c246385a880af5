/// Attribution patching (Nanda 2023; AtP in Kramár et al. 2024): the first-order estimate of every activation
/// patch at once. Patching the source activation a_src into the base run at a place changes the metric by about
/// (a_src − a_base) · ∂metric/∂a at the base run, summed over the place's entries, so one forward and backward of
/// the base run and one forward of the source run estimate every layer × position and every head. Exact where the
/// metric is linear in the patched activation; a guide to where exact patching (ActivationPatching) is worth running.
module MechInterp.Analysis.Patching.AttributionPatching

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Patching.ActivationPatching

/// How well the estimates track exact patching: Pearson correlation over every place, and the places where they
/// differ most (label, exact, estimate), worst first.
type AttributionComparison =
    { Component: string
      Correlation: float
      WorstMisses: (string * float * float) list }

let private names (model: HookedTransformer) =
    let cfg = model.Config
    [ for l in 0 .. cfg.n_layers - 1 do
          yield componentHook l "resid_pre"
          yield componentHook l "attn_out"
          if not cfg.attn_only then yield componentHook l "mlp_out"
          yield (HookNames.Z l) ]

let private result componentName rows columns (values: float[,]) clean corrupted =
    let span = clean - corrupted
    { Component = componentName
      RowLabels = rows
      ColumnLabels = columns
      Values = values
      Recovered = values |> Array2D.map (fun v -> if abs span < 1e-12 then nan else (v - corrupted) / span)
      Clean = clean
      Corrupted = corrupted }

/// The AtP estimates of patching clean activations into the corrupted run, in ActivationPatching's direction
/// and layout (resid_pre, attn_out, mlp_out by layer × position, then heads through attn.hook_z): Values are the
/// estimated metric with that place patched. One forward and backward of the corrupted run (the run patched into)
/// and one forward of the clean run. For Kramár et al.'s direction (corrupted into clean, the backward on the clean
/// run) swap the two inputs. `metric` maps logits to a differentiable scalar. The model's parameters are left as
/// they were, .grad included.
let attributionPatching (model: HookedTransformer) (cleanTokens: torch.Tensor) (corruptedTokens: torch.Tensor)
                        (metric: torch.Tensor -> torch.Tensor) =
    if cleanTokens.shape <> corruptedTokens.shape then
        invalidArg (nameof corruptedTokens)
            $"clean tokens [{String.Join(',', cleanTokens.shape)}] and corrupted tokens [{String.Join(',', corruptedTokens.shape)}] must have the same shape"
    let cfg = model.Config
    let wanted = names model |> Set.ofList
    let filter = Func<string, bool>(fun n -> wanted.Contains n)
    // Frozen parameters: the gradients needed are the activations', and no .grad of the model changes.
    let parameters = model.parameters() |> Array.ofSeq
    let flags = parameters |> Array.map (fun p -> p.requires_grad)
    for p in parameters do p.requires_grad <- false
    try
        use _grad = torch.enable_grad()
        let struct (corruptedValue, corrupted, grads) = model.RunWithCacheAndGradients(corruptedTokens, Func<_, _>(metric), filter)
        use corrupted = corrupted
        use grads = grads
        use _ = torch.no_grad()
        let struct (cleanLogits, clean) = model.RunWithCache(cleanTokens, filter)
        use clean = clean
        let cleanValue = (metric cleanLogits).to_type(torch.ScalarType.Float64).item<float>()
        let baseValue = corruptedValue.to_type(torch.ScalarType.Float64).item<float>()
        let attribution name = (clean.[name] - corrupted.[name]) * grads.[name]     // [batch, pos, ...]
        let byPosition componentName =
            let values =
                Array2D.init cfg.n_layers (int cleanTokens.shape.[1]) (fun _ _ -> 0.0)
            for l in 0 .. cfg.n_layers - 1 do
                use _scope = torch.NewDisposeScope()
                let perPos = (attribution (componentHook l componentName)).sum([| 0L; 2L |]).to_type(torch.ScalarType.Float64).data<float>().ToArray()
                perPos |> Array.iteri (fun p v -> values.[l, p] <- baseValue + v)
            result componentName [| for l in 0 .. cfg.n_layers - 1 -> $"L{l}" |]
                [| for p in 0 .. int cleanTokens.shape.[1] - 1 -> string p |] values cleanValue baseValue
        let heads =
            let values = Array2D.zeroCreate cfg.n_layers cfg.n_heads
            for l in 0 .. cfg.n_layers - 1 do
                use _scope = torch.NewDisposeScope()
                let perHead = (attribution (HookNames.Z l)).sum([| 0L; 1L; 3L |]).to_type(torch.ScalarType.Float64).data<float>().ToArray()
                perHead |> Array.iteri (fun h v -> values.[l, h] <- baseValue + v)
            result "head (attn.hook_z)" [| for l in 0 .. cfg.n_layers - 1 -> $"L{l}" |]
                [| for h in 0 .. cfg.n_heads - 1 -> $"H{h}" |] values cleanValue baseValue
        [ yield byPosition "resid_pre"
          yield byPosition "attn_out"
          if not cfg.attn_only then yield byPosition "mlp_out"
          yield heads ]
    finally
        Array.iter2 (fun (p: TorchSharp.Modules.Parameter) flag -> p.requires_grad <- flag) parameters flags

/// Pearson correlation of the estimated and exact Values over every place (NaN when either is constant), and the
/// `worst` places where they differ most.
let compare (worst: int) (exact: PatchingResult) (estimate: PatchingResult) =
    if Array2D.length1 exact.Values <> Array2D.length1 estimate.Values || Array2D.length2 exact.Values <> Array2D.length2 estimate.Values then
        invalidArg (nameof estimate) $"'{estimate.Component}' is {Array2D.length1 estimate.Values}×{Array2D.length2 estimate.Values} but exact '{exact.Component}' is {Array2D.length1 exact.Values}×{Array2D.length2 exact.Values}"
    let places =
        [ for r in 0 .. Array2D.length1 exact.Values - 1 do
              for c in 0 .. Array2D.length2 exact.Values - 1 ->
                  $"{exact.RowLabels.[r]} {exact.ColumnLabels.[c]}", exact.Values.[r, c], estimate.Values.[r, c] ]
    let xs = places |> List.map (fun (_, x, _) -> x) |> Array.ofList
    let ys = places |> List.map (fun (_, _, y) -> y) |> Array.ofList
    let mx, my = Array.average xs, Array.average ys
    let cov = Array.map2 (fun x y -> (x - mx) * (y - my)) xs ys |> Array.sum
    let sx = xs |> Array.sumBy (fun x -> (x - mx) ** 2.0) |> sqrt
    let sy = ys |> Array.sumBy (fun y -> (y - my) ** 2.0) |> sqrt
    { Component = exact.Component
      Correlation = if sx < 1e-12 || sy < 1e-12 then nan else cov / (sx * sy)
      WorstMisses = places |> List.sortByDescending (fun (_, x, y) -> abs (x - y)) |> List.truncate worst }

/// attributionPatching for C#: AttributionPatching.estimate(model, clean, corrupted, logits => metric).
let estimate (model: HookedTransformer) (cleanTokens: torch.Tensor) (corruptedTokens: torch.Tensor) (metric: Func<torch.Tensor, torch.Tensor>) =
    attributionPatching model cleanTokens corruptedTokens metric.Invoke
