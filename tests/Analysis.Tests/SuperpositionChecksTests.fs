/// The paper checks of the superposition section on hand-built embeddings: they agree where the geometry is the
/// paper's and disagree where it is not.
module MechInterp.Analysis.Tests.SuperpositionChecksTests

open System
open Xunit
open MechInterp.ToyModels
open MechInterp.Analysis.Superposition
open MechInterp.Analysis.Superposition.Sweep

let private setting name n m =
    { Name = name; Features = n; Hidden = m; ImportanceDecay = 0.9; Activation = ToyActivation.Relu
      Densities = [ 0.01 ]; Replicates = 1; Seed = 0L; Training = paperTraining }

let private sweep (s: SweepSetting) (w: float[,]) =
    { Setting = s; Points = [ Sweep.measure 0.01 0.1 w ]; StepsRun = 1; Seconds = 0.0 }

/// n vectors of length r at angles 2πk/n in the plane: W [2, n].
let private polygon n r =
    Array2D.init 2 n (fun row k ->
        let a = 2.0 * Math.PI * float k / float n
        r * (if row = 0 then cos a else sin a))

[<Fact>]
let ``a regular pentagon agrees at any norm, a square with a fifth feature on an axis does not`` () =
    for r in [ 1.0; 1.2 ] do
        let f = Section.planePentagon (sweep (setting "p" 5 2) (polygon 5 r))
        Assert.True(f.Agrees, f.Evidence)
    let square = Array2D.init 2 5 (fun row k -> if k = 4 then (if row = 0 then 0.7 else 0.0) else (polygon 4 1.0).[row, k])
    let f = Section.planePentagon (sweep (setting "p" 5 2) square)
    Assert.False(f.Agrees, f.Evidence)

[<Fact>]
let ``sticky fractions: features in uniform polytopes cluster, an even spread of D_i does not`` () =
    // Pairs of antipodal features (D_i = 1/2) in orthogonal planes: every D_i sits at a sticky fraction.
    let antipodal = Array2D.init 4 8 (fun row k -> if row = k / 2 then (if k % 2 = 0 then 1.0 else -1.0) else 0.0)
    let s = setting "d" 8 4
    let f = Section.dimensionalitySticky { sweep s antipodal with Points = List.replicate 20 (Sweep.measure 0.01 0.1 antipodal) }
    Assert.True(f.Agrees, f.Evidence)
    Assert.InRange(Section.stickyChance, 0.4, 0.6)
    Assert.Equal(3, Section.stickyStretches.Length)   // [1/3 … 1/2], [2/3 … 3/4], 1
    // Features at angles that spread D_i between the fractions: no more at them than chance.
    let rng = Random 3
    let points =
        [ for _ in 1 .. 40 ->
              let w = Array2D.init 4 8 (fun _ _ -> rng.NextDouble() * 2.0 - 1.0)
              Sweep.measure 0.01 0.1 w ]
        |> List.filter (fun p -> p.DimsPerFeature < 1.0)
    let g = Section.dimensionalitySticky { sweep s antipodal with Points = points }
    Assert.False(g.Agrees, g.Evidence)
