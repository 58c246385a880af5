/// Superposition metrics on hand-built embeddings whose answers are known in closed form.
module MechInterp.Analysis.Tests.SuperpositionMetricsTests

open System
open Xunit
open MechInterp.Analysis.Superposition
open MechInterp.Analysis.Superposition.Metrics

let private close (expected: float) (actual: float) =
    Assert.True(abs (expected - actual) < 1e-9, $"expected {expected}, got {actual}")

let private allClose (expected: float[]) (actual: float[]) =
    Assert.Equal(expected.Length, actual.Length)
    Array.iter2 close expected actual

/// n unit vectors at angles 2πk/n in the plane: W [2, n].
let private polygon n =
    Array2D.init 2 n (fun r k ->
        let a = 2.0 * Math.PI * float k / float n
        if r = 0 then cos a else sin a)

[<Fact>]
let ``orthogonal features: unit norms, no superposition, one dimension each`` () =
    let w = Array2D.init 3 3 (fun r c -> if r = c then 2.0 else 0.0) // three orthogonal features of length 2
    allClose [| 2.0; 2.0; 2.0 |] (featureNorms w)
    allClose [| 0.0; 0.0; 0.0 |] (superposition w)
    allClose [| 1.0; 1.0; 1.0 |] (featureDimensionality w)
    close (3.0 / 12.0) (dimsPerFeature w)
    Assert.Equal(3, represented w)
    close 4.0 (gram w).[1, 1]
    close 0.0 (gram w).[0, 2]

[<Fact>]
let ``antipodal pair: each feature fully interferes with the other and gets half a dimension`` () =
    let w = array2D [ [ 1.0; -1.0 ] ] // m = 1, n = 2
    allClose [| 1.0; 1.0 |] (featureNorms w)
    allClose [| 1.0; 1.0 |] (superposition w)
    allClose [| 0.5; 0.5 |] (featureDimensionality w)
    close 0.5 (dimsPerFeature w)
    close -1.0 (gram w).[0, 1]

[<Fact>]
let ``pentagon: five features share two dimensions at 2/5 each`` () =
    let w = polygon 5
    allClose (Array.create 5 1.0) (featureNorms w)
    // Σ_{j≠i} cos² over the other four vertices = 2·cos²72° + 2·cos²144° = 1.5
    allClose (Array.create 5 1.5) (superposition w)
    allClose (Array.create 5 0.4) (featureDimensionality w)
    close 0.4 (dimsPerFeature w)
    Assert.Equal(5, represented w)

[<Fact>]
let ``an unrepresented feature has zero norm, zero dimensionality and does not count`` () =
    let w = array2D [ [ 1.0; 0.0; 0.1 ]; [ 0.0; 1.0; 0.0 ] ] // feature 2 is short: 0.1
    allClose [| 1.0; 1.0; 0.1 |] (featureNorms w)
    Assert.Equal(2, represented w)
    let zero = array2D [ [ 1.0; 0.0 ] ]
    allClose [| 1.0; 0.0 |] (featureDimensionality zero)
    allClose [| 0.0; 0.0 |] (superposition zero)

[<Fact>]
let ``the phase of feature 2 follows the geometry`` () =
    Assert.Equal(PhaseDiagram.NotRepresented, PhaseDiagram.classify (array2D [ [ 1.0; 0.0 ] ]))
    Assert.Equal(PhaseDiagram.DedicatedDimension, PhaseDiagram.classify (array2D [ [ 0.0; 1.0 ] ]))
    Assert.Equal(PhaseDiagram.Superposition, PhaseDiagram.classify (array2D [ [ 1.0; -1.0 ] ]))

[<Fact>]
let ``a non-finite or empty W is rejected by name`` () =
    let bad = Assert.Throws<ArgumentException>(fun () -> featureNorms (array2D [ [ 1.0; nan ] ]) |> ignore)
    Assert.Contains("non-finite", bad.Message)
    let ragged = Assert.Throws<ArgumentException>(fun () -> ofRows [| [| 1.0; 2.0 |]; [| 1.0 |] |] |> ignore)
    Assert.Contains("row 1 of W has 1 entries", ragged.Message)
