/// The superposition experiment's settings are checked before any training, with the bad value named.
module MechInterp.Analysis.Tests.SuperpositionSettingsTests

open System
open Xunit
open MechInterp.ToyModels
open MechInterp.Analysis.Report
open MechInterp.Analysis.Superposition
open MechInterp.Analysis.Superposition.Sweep

let private setting =
    { Name = "test"; Features = 5; Hidden = 2; ImportanceDecay = 0.9; Activation = ToyActivation.Relu
      Densities = [ 1.0; 0.1 ]; Replicates = 2; Seed = 0L; Training = { paperTraining with Steps = 10; BatchSize = 8 } }

let private rejects (s: SweepSetting) (fragment: string) =
    let e = Assert.ThrowsAny<ArgumentException>(fun () -> validate s)
    Assert.Contains(fragment, e.Message)

[<Fact>]
let ``m greater than n is rejected`` () = rejects { setting with Hidden = 6 } "m (6) must not exceed the feature count n (5)"

[<Fact>]
let ``density outside 0 to 1 is rejected naming S`` () =
    rejects { setting with Densities = [ 1.0; 1.5 ] } "sparsity S = -0.5 outside [0, 1]"
    rejects { setting with Densities = [ -0.2 ] } "sparsity S = 1.2 outside [0, 1]"

[<Fact>]
let ``zero instances are rejected`` () = rejects { setting with Densities = [] } "zero instances"

[<Fact>]
let ``both scales validate, and full is the paper's optimiser`` () =
    for scale in [ Quick; Full ] do
        let c = Experiment.config scale
        for s in c.Main @ [ c.Plane; c.Dimensionality ] do validate s
    let full = Experiment.config Full
    for s in full.Main do
        Assert.Equal(10_000, s.Training.Steps)
        Assert.Equal(1024, s.Training.BatchSize)
        Assert.Equal(1e-3, s.Training.LearningRate)
        Assert.Equal<float list>(Experiment.paperDensities, s.Densities)

[<Fact>]
let ``zero replicates are rejected`` () = rejects { setting with Replicates = 0 } "replicates must be at least 1, got 0"

[<Collection("torch")>]
type SweepTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``a sweep keeps the lowest-loss replicate of every density and records its convergence`` () =
        let r = Sweep.run ignore { setting with Training = { setting.Training with Steps = 30; ConvergenceWindow = 1_000 } }
        for p in r.Points do
            Assert.Equal(2, p.ReplicateLosses.Length)
            Assert.Equal(Array.min p.ReplicateLosses, p.Loss)
            Assert.Equal(p.ReplicateLosses.[p.Replicate], p.Loss)
            Assert.Equal(2, p.ReplicateRepresented.Length)
            // 30 steps cannot be flat over a 1,000-step window: nothing may be reported converged.
            Assert.False(p.Convergence.Converged)
            Assert.Equal(0, p.ConvergedReplicates)
        Assert.Equal(30, r.StepsRun)
