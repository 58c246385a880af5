/// How well an SAE's decoder recovers known feature directions: mean max cosine similarity (MMCS, Sharkey et al.
/// 2022: for each true feature, its best cosine with any decoder row, averaged) and the Hungarian-matched mean
/// |cosine| (each feature gets its own latent, so one latent cannot serve two features).
module MechInterp.Analysis.Dictionary.GroundTruth

open System
open TorchSharp

type Tensor = torch.Tensor

/// cos(truth_i, decoder_j) for truth [features, d] and decoder rows [latents, d] → [features, latents].
let cosines (truth: Tensor) (decoder: Tensor) : float[,] =
    if truth.dim() <> 2L || decoder.dim() <> 2L || truth.shape.[1] <> decoder.shape.[1] then
        invalidArg (nameof truth) $"""features [n, d] and decoder rows [latents, d] must share d; got [{String.Join(", ", truth.shape)}] and [{String.Join(", ", decoder.shape)}]"""
    use _scope = torch.NewDisposeScope()
    let unit (t: Tensor) = let t = t.detach().to_type(torch.float64) in t.div(t.norm(1, true).clamp_min(sc 1e-12))
    let c = (unit truth).matmul((unit decoder).t()).contiguous()
    let flat = c.data<float>().ToArray()
    let n, m = int c.shape.[0], int c.shape.[1]
    Array2D.init n m (fun i j -> flat.[i * m + j])

/// For each feature (row), its largest cosine with any latent.
let maxCosines (cos: float[,]) = Array.init (Array2D.length1 cos) (fun i -> Array.max cos.[i, *])

/// MMCS over the features `rows` selects (all by default).
let mmcs (cos: float[,]) (rows: int[]) =
    if rows.Length = 0 then nan else let best = maxCosines cos in rows |> Array.averageBy (fun i -> best.[i])

/// Mean |cosine| under the one-to-one matching of the selected features to latents that maximises it; with
/// fewer latents than features, the unmatched features count 0.
let matchedMeanAbsCosine (cos: float[,]) (rows: int[]) =
    if rows.Length = 0 then nan
    else
        let m = Array2D.length2 cos
        let abs' = Array2D.init rows.Length m (fun r j -> abs cos.[rows.[r], j])
        let total =
            if rows.Length <= m then
                let a = Hungarian.assign (Array2D.map (fun v -> -v) abs')
                a |> Array.mapi (fun r j -> abs'.[r, j]) |> Array.sum
            else
                let a = Hungarian.assign (Array2D.init m rows.Length (fun j r -> -abs'.[r, j]))
                a |> Array.mapi (fun j r -> abs'.[r, j]) |> Array.sum
        total / float rows.Length
