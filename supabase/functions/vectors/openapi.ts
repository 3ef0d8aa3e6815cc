/** Prints the OpenAPI document (committed as docs/openapi.json): `deno task openapi > ../../../docs/openapi.json`. */
import { openApiDocument } from "./app.ts";

console.log(JSON.stringify(await openApiDocument(), null, 2));
