namespace MechInterp.Analysis.Tests

open Xunit

/// Every test class that touches TorchSharp takes this fixture: libtorch loads once, first.
type TorchFixture() =
    do MechInterp.Runtime.TorchRuntime.EnsureLoaded()

[<CollectionDefinition("torch")>]
type TorchCollection() =
    interface ICollectionFixture<TorchFixture>
