/// The synthetic dictionary benchmark of Sharkey et al. (2022): `Features` random unit directions in `Dim`
/// dimensions, each input a sparse non-negative combination of them (a feature fires with its own probability,
/// decaying across features, with a uniform [0, 1] magnitude), so the true dictionary is known.
namespace MechInterp.Analysis.Dictionary

open System
open TorchSharp

type SyntheticDictionary(dim: int, features: int, meanActive: float, decay: float, seed: int64) =
    do
        if dim < 1 || features < 1 then invalidArg (nameof dim) $"dim ({dim}) and features ({features}) must be at least 1"
        if not (meanActive > 0.0 && meanActive <= float features) then
            invalidArg (nameof meanActive) $"the mean number of active features ({meanActive}) must lie in (0, {features}]"
        if not (decay >= 1.0) then invalidArg (nameof decay) $"decay ({decay}), the first feature's probability over the last's, must be at least 1"
    let generator = new torch.Generator(uint64 seed)
    // Directions [features, dim], unit rows; probabilities p_i ∝ decay^(−i/(n−1)), summing to meanActive.
    let directions =
        use raw = torch.randn([| int64 features; int64 dim |], generator = generator)
        raw.div(raw.norm(1, true))
    let probabilities =
        let w = Array.init features (fun i -> Math.Pow(decay, -(float i) / float (max 1 (features - 1))))
        let total = Array.sum w
        let p = w |> Array.map (fun x -> x * meanActive / total)
        if Array.max p > 1.0 then invalidArg (nameof meanActive) $"with decay {decay}, a mean of {meanActive} active features needs a probability above 1"
        torch.tensor(p |> Array.map float32)

    member _.Dim = dim
    member _.Features = features
    /// The true dictionary, [features, dim], unit rows.
    member _.Directions = directions
    /// Each feature's firing probability, [features].
    member _.Probabilities = probabilities

    /// A batch of codes [batch, features] (sparse, in [0, 1]) and their data [batch, dim].
    member _.SampleWithCodes(batch: int) =
        use u = torch.rand([| int64 batch; int64 features |], generator = generator)
        use fire = u.lt(probabilities)
        use magnitude = torch.rand([| int64 batch; int64 features |], generator = generator)
        let codes = magnitude.mul(fire)
        codes, codes.matmul(directions)

    /// A batch of data [batch, dim].
    member this.Sample(batch: int) =
        let codes, x = this.SampleWithCodes batch
        codes.Dispose()
        x

    interface IDisposable with
        member _.Dispose() =
            directions.Dispose()
            probabilities.Dispose()
            generator.Dispose()
