/// FsCheck generators shared by the property tests. Fixed seeds are printed by FsCheck on failure.
module MechInterp.Analysis.Tests.Generators

open FsCheck
open FsCheck.FSharp

/// A tensor shape of rank 1..3 with small sizes, and a seed to fill it.
type TensorSpec = { Shape: int64[]; Seed: int64; Scale: float }

let tensorSpec =
    gen {
        let! rank = Gen.choose (1, 3)
        let! dims = Gen.arrayOfLength rank (Gen.choose (1, 40))
        let! seed = Gen.choose (0, 1_000_000)
        let! scale = Gen.elements [ 0.1; 1.0; 10.0; 1000.0 ]
        return { Shape = dims |> Array.map int64; Seed = int64 seed; Scale = scale }
    }

type Arbitraries =
    static member TensorSpec() = Arb.fromGen tensorSpec
