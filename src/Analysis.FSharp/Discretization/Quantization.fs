/// Forcing the residual stream onto a grid: after every block, each dimension is clamped to [−c, c]
/// and rounded to the nearest of k evenly spaced levels (−c and c included).
module MechInterp.Analysis.Discretization.Quantization

open TorchSharp
open MechInterp.Hooks
open MechInterp.Model

/// How the gradient crosses the rounding.
type GradientPath =
    /// x_q = x + (Q(x) − x).detach(): the forward value is Q(x), the gradient passes as if Q were the identity.
    | StraightThrough
    /// x_q = Q(x) with zero gradient: nothing upstream of a quantized stream learns through it.
    | Blocked

/// k levels per dimension on [−Range, Range].
type Quantizer =
    { Levels: int
      Range: float
      Gradient: GradientPath }

let validate (q: Quantizer) =
    if q.Levels < 2 then invalidArg "Levels" $"a quantizer needs at least 2 levels, got {q.Levels}"
    if not (q.Range > 0.0) || System.Double.IsInfinity q.Range then invalidArg "Range" $"the range must be positive and finite, got {q.Range}"
    q

/// Q(x): clamp to [−c, c], round to the nearest of the k levels −c + j·2c/(k − 1).
let roundToGrid (q: Quantizer) (x: torch.Tensor) : torch.Tensor =
    let q = validate q
    let c = q.Range
    let step = 2.0 * c / float (q.Levels - 1)
    let scalar (v: float) = torch.tensor(float32 v)
    x.clamp(scalar -c, scalar c).add(scalar c).div(scalar step).round().mul(scalar step).sub(scalar c)

/// The quantized activation with the quantizer's gradient path.
let quantize (q: Quantizer) (x: torch.Tensor) =
    let rounded = roundToGrid q x
    match q.Gradient with
    | StraightThrough -> x + (rounded - x).detach()
    | Blocked -> rounded.detach()

/// The hook names a quantized model rewrites: every block's resid_post.
let quantizedHookNames (model: HookedTransformer) =
    [ for l in 0 .. model.Config.n_layers - 1 -> HookNames.ResidPost l ]

/// Hooks that quantize the residual stream after every block.
let quantizeHooks (q: Quantizer) (model: HookedTransformer) =
    let q = validate q
    let names = quantizedHookNames model |> Set.ofList
    [| Hook(System.Func<string, bool>(fun n -> names.Contains n), HookFn(fun act _ -> quantize q act)) |]

/// The control for the grid variants: the same clamp to [−range, range] and the same straight-through
/// gradient, without rounding, so a grid variant's cost splits into what clamping costs and what rounding adds.
let clamp (range: float) (x: torch.Tensor) =
    if not (range > 0.0) || System.Double.IsInfinity range then invalidArg (nameof range) $"the range must be positive and finite, got {range}"
    let low, high = TorchSharp.Scalar.op_Implicit(float32 -range), TorchSharp.Scalar.op_Implicit(float32 range)
    x + (x.clamp(low, high) - x).detach()

/// Hooks that clamp the residual stream after every block (the clamp-only control).
let clampHooks (range: float) (model: HookedTransformer) =
    if not (range > 0.0) || System.Double.IsInfinity range then invalidArg (nameof range) $"the range must be positive and finite, got {range}"
    let names = quantizedHookNames model |> Set.ofList
    [| Hook(System.Func<string, bool>(fun n -> names.Contains n), HookFn(fun act _ -> clamp range act)) |]
