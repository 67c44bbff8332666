// lossd from Java with nothing but the JDK (11+): java.net.http.HttpClient with its default settings.
//
//   java LossdClient.java http://localhost:8000
//
// The default client prefers HTTP/2 and, on a plain http:// URL, offers an upgrade to it (Upgrade: h2c)
// with its first request; lossd declines the offer and answers over HTTP/1.1, body read as usual.
// Each call prints one JSON line: {"case", "status", "version", "request", "response"}; the exit status
// is 1 if any call did not answer 200. A test runs this file and checks every number against torch.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class LossdClient {
    public static void main(String[] args) throws Exception {
        String base = args.length > 0 ? args[0] : "http://localhost:8000";
        HttpClient client = HttpClient.newHttpClient();
        String[][] calls = {
            {"v1-mse", "/v1/losses/mse", "{\"input\": [[0.5, 1.0], [2.0, 3.0]], \"target\": [[0, 1], [2, 2]], \"return_grad\": true}"},
            {"v1-evaluate", "/v1/evaluate",
                "{\"tensors\": {\"input\": [[0.5, 1.5], [-3.0, 0.25]], \"target\": [[1, 2], [-2, 0]]},"
                + " \"losses\": [{\"name\": \"mse\"}, {\"name\": \"l1\", \"reduction\": \"sum\"}, {\"name\": \"smooth_l1\", \"beta\": 0.5}]}"},
            {"v2-infer", "/v2/models/mse/infer",
                "{\"id\": \"java-1\", \"inputs\": ["
                + "{\"name\": \"input\", \"shape\": [3], \"datatype\": \"FP32\", \"data\": [1.0, 2.0, 3.5]},"
                + " {\"name\": \"target\", \"shape\": [3], \"datatype\": \"FP32\", \"data\": [0.0, 0.0, 1.0]}]}"},
        };
        boolean ok = true;
        for (String[] call : calls) {
            HttpRequest request = HttpRequest.newBuilder(URI.create(base + call[1]))
                .header("content-type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(call[2]))
                .build();
            HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
            ok &= response.statusCode() == 200;
            System.out.println("{\"case\": \"" + call[0] + "\", \"status\": " + response.statusCode()
                + ", \"version\": \"" + response.version() + "\", \"request\": " + call[2]
                + ", \"response\": " + response.body() + "}");
        }
        System.exit(ok ? 0 : 1);
    }
}
