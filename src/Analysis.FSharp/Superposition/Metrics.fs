/// How a toy model's embedding W [m, n] (column i is feature i's direction W_i) represents its features.
/// Definitions follow Elhage et al. (2022); W is a plain matrix so hand-built geometries test them.
module MechInterp.Analysis.Superposition.Metrics

open System

/// A feature counts as represented when its direction is longer than this (the issue's and paper's cut-off).
let representedThreshold = 0.5

let private validate (w: float[,]) =
    let m, n = Array2D.length1 w, Array2D.length2 w
    if m < 1 || n < 1 then invalidArg (nameof w) $"W must be a non-empty [m, n] matrix, got [{m}, {n}]"
    w |> Array2D.iter (fun x -> if not (Double.IsFinite x) then invalidArg (nameof w) $"W contains a non-finite value ({x})")

/// W as rows [m][n], as the trained ToyModel hands it out.
let ofRows (rows: float[][]) : float[,] =
    if rows.Length = 0 then invalidArg (nameof rows) "W must have at least one row"
    let n = rows.[0].Length
    rows |> Array.iteri (fun r row -> if row.Length <> n then invalidArg (nameof rows) $"row {r} of W has {row.Length} entries, row 0 has {n}")
    Array2D.init rows.Length n (fun r c -> rows.[r].[c])

let private column (w: float[,]) i = Array.init (Array2D.length1 w) (fun r -> w.[r, i])

let private dot (a: float[]) (b: float[]) = Array.fold2 (fun acc x y -> acc + x * y) 0.0 a b

/// WᵀW [n, n]: entry (i, j) is W_i · W_j, the interference of feature j on feature i's read-out.
let gram (w: float[,]) : float[,] =
    validate w
    let cols = Array.init (Array2D.length2 w) (column w)
    Array2D.init cols.Length cols.Length (fun i j -> dot cols.[i] cols.[j])

/// ‖W_i‖ per feature.
let featureNorms (w: float[,]) : float[] =
    validate w
    Array.init (Array2D.length2 w) (fun i -> column w i |> fun c -> sqrt (dot c c))

/// (Ŵ_i · W_j)² for all j; a zero-length W_i has no direction, so its row is all zeros.
let private projectionsSquared (w: float[,]) i =
    let cols = Array.init (Array2D.length2 w) (column w)
    let norm = sqrt (dot cols.[i] cols.[i])
    if norm = 0.0 then Array.zeroCreate cols.Length
    else cols |> Array.map (fun cj -> (dot cols.[i] cj / norm) ** 2.0)

/// Σ_{j≠i} (Ŵ_i · W_j)² per feature: how much other features load on feature i's direction.
let superposition (w: float[,]) : float[] =
    validate w
    Array.init (Array2D.length2 w) (fun i ->
        projectionsSquared w i |> Array.mapi (fun j p -> if j = i then 0.0 else p) |> Array.sum)

/// D* = m / ‖W‖_F²: hidden dimensions per (embedding-norm-weighted) feature; infinity for W = 0.
let dimsPerFeature (w: float[,]) : float =
    validate w
    let frob = w |> Seq.cast<float> |> Seq.sumBy (fun x -> x * x)
    float (Array2D.length1 w) / frob

/// D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)² per feature (the j = i term is ‖W_i‖²); 0 for an unrepresented zero W_i.
let featureDimensionality (w: float[,]) : float[] =
    validate w
    Array.init (Array2D.length2 w) (fun i ->
        let p = projectionsSquared w i
        let total = Array.sum p
        if total = 0.0 then 0.0 else p.[i] / total)

/// How many features have ‖W_i‖ > 0.5.
let represented (w: float[,]) : int =
    featureNorms w |> Array.filter (fun x -> x > representedThreshold) |> Array.length

/// The fractions the paper finds feature dimensionalities stick at (D_i of a feature in a uniform polytope), with labels.
let stickyFractions = [ 1.0, "1"; 0.75, "3/4"; 2.0 / 3.0, "2/3"; 0.5, "1/2"; 0.4, "2/5"; 0.375, "3/8"; 1.0 / 3.0, "1/3" ]
