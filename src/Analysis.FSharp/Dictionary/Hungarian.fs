/// The assignment problem (Kuhn–Munkres, the O(n² m) potentials form): a one-to-one matching of rows to
/// columns with the smallest total cost. Used to give each ground-truth feature its own SAE latent.
module MechInterp.Analysis.Dictionary.Hungarian

open System

/// For cost [rows, cols] with rows ≤ cols, the column given to each row, minimising the summed cost.
let assign (cost: float[,]) : int[] =
    let n, m = Array2D.length1 cost, Array2D.length2 cost
    if n > m then invalidArg (nameof cost) $"assignment needs rows ({n}) ≤ columns ({m}); transpose the cost"
    cost |> Array2D.iteri (fun r c v -> if not (Double.IsFinite v) then invalidArg (nameof cost) $"cost[{r}, {c}] is {v}; costs must be finite")
    // 1-based arrays with a virtual column 0, as in the classic formulation.
    let u = Array.zeroCreate (n + 1)
    let v = Array.zeroCreate (m + 1)
    let owner = Array.zeroCreate (m + 1)    // owner.[j]: the row matched to column j (0: none)
    let way = Array.zeroCreate (m + 1)
    for i in 1 .. n do
        owner.[0] <- i
        let mutable j0 = 0
        let minv = Array.create (m + 1) Double.PositiveInfinity
        let used = Array.zeroCreate (m + 1)
        let mutable fin = false
        while not fin do
            used.[j0] <- true
            let i0 = owner.[j0]
            let mutable delta = Double.PositiveInfinity
            let mutable j1 = 0
            for j in 1 .. m do
                if not used.[j] then
                    let cur = cost.[i0 - 1, j - 1] - u.[i0] - v.[j]
                    if cur < minv.[j] then
                        minv.[j] <- cur
                        way.[j] <- j0
                    if minv.[j] < delta then
                        delta <- minv.[j]
                        j1 <- j
            for j in 0 .. m do
                if used.[j] then
                    u.[owner.[j]] <- u.[owner.[j]] + delta
                    v.[j] <- v.[j] - delta
                else minv.[j] <- minv.[j] - delta
            j0 <- j1
            if owner.[j0] = 0 then fin <- true
        // Walk the augmenting path back.
        let mutable j = j0
        while j <> 0 do
            let prev = way.[j]
            owner.[j] <- owner.[prev]
            j <- prev
    let result = Array.create n -1
    for j in 1 .. m do
        if owner.[j] > 0 then result.[owner.[j] - 1] <- j - 1
    result
