// Prints what the scripts' argument helpers make of this run's arguments (ScriptTests asserts on it).
#load "../../../scripts/Prelude.fsx"

open Prelude

printfn "seeds: %A" (seedsOr [ 0 .. 7 ])
printfn "depths: %A" (intsOf "--depths")
printfn "steps: %A" (intOf "--steps")
printfn "tasks: %A" (listOf "--tasks")
