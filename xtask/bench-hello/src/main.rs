//! An echo function with nothing but `lambda_runtime`, tokio and serde_json,
//! like the hello-world of public cold-start comparisons. The benchmark
//! starts it next to our functions, so their init time and size are read
//! against what the runtime alone costs on the same machine in the same run.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move { Ok::<_, Error>(event.payload) },
    ))
    .await
}
